"""The real mlx_lm.server (mlx-lm's OpenAI-compatible server, with its LRU prompt cache),
started on loopback the way foundry loads mlx: OpenBLAS first, then mlx. Started plainly it
links the reference BLAS and prefills ~30x slower on Linux.

Its GET /v1/models scans the Hugging Face cache and answers with an empty body when there is
none, so it runs with HF_HOME in a directory of its own that has one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# mlx_lm.server's main() reads sys.argv; argv[0] is only its name in usage messages.
LAUNCHER = (
    "import sys; from foundry.local.runtime import preload_openblas; preload_openblas(); "
    "from mlx_lm.server import main; sys.argv[0] = 'mlx_lm.server'; main()"
)
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def mlx_lm_server(
    model_dir: Path, home: Path, *, extra: tuple[str, ...] = (), ready_timeout_s: float = 120.0
) -> Iterator[str]:
    """Run mlx_lm.server for `model_dir`; yields its base URL (…/v1); stops it after."""
    port = free_port()
    (home / "hf" / "hub").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    log = (home / "mlx_lm_server.log").open("wb")
    command = [sys.executable, "-c", LAUNCHER, "--model", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *extra]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlx_lm.server exited: see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlx_lm.server did not start: see {log.name}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
