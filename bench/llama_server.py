"""llama.cpp's own `llama-server`, built from the llama.cpp commit that the installed
llama-cpp-python vendors (its sdist's vendor/llama.cpp), once, into a cache directory: the
anchor foundry serve's benchmarks compare against, on the same kernels.

FOUNDRY_LLAMA_SERVER names a llama-server binary built some other way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "foundry-bench"


def build_llama_server() -> Path:
    given = os.environ.get("FOUNDRY_LLAMA_SERVER")
    if given:
        return Path(given)
    import llama_cpp

    version = llama_cpp.__version__
    binary = CACHE / f"llama-server-{version}" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    print(
        f"building llama-server from llama-cpp-python {version}'s vendored llama.cpp into "
        f"{binary.parent.parent} (once; minutes on two cores)",
        flush=True,
    )
    work = CACHE / f"src-{version}"
    work.mkdir(parents=True, exist_ok=True)
    sdist = work / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(work),
            ],
            check=True,
        )
    source = work / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not source.is_dir():
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
    build = work / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_CURL=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
        ],
        check=True,
    )
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True
    )
    binary.parent.mkdir(parents=True, exist_ok=True)
    os.replace(build / "bin" / "llama-server", binary)
    return binary
