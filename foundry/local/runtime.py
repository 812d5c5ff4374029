"""Importing mlx the right way: OpenBLAS first on Linux, so fp32 matmul is ~30x faster.

The Linux mlx-cpu wheel links the reference BLAS. Loading an optimised BLAS with RTLD_GLOBAL
before mlx is imported makes mlx's BLAS symbols resolve to it (measured: 7 -> 230 GFLOP/s).
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
from types import ModuleType

from foundry.errors import LocalModelError, install_hint

OPENBLAS_ENV = "FOUNDRY_OPENBLAS"
APT_HINT = "sudo apt-get install libopenblas0-pthread"

_preloaded: str | None = None
_preload_attempted = False


def openblas_candidates() -> list[str]:
    """Where Debian/Ubuntu/Fedora put a shared OpenBLAS, threaded builds first."""
    explicit = os.environ.get(OPENBLAS_ENV)
    found: list[str] = [explicit] if explicit else []
    patterns = [
        "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas*.so*",
        "/usr/lib/*-linux-gnu/openblas-openmp/libopenblas*.so*",
        "/usr/lib/*-linux-gnu/libopenblas*.so*",
        "/usr/lib64/libopenblas*.so*",
        "/usr/lib/libopenblas*.so*",
        "/usr/local/lib/libopenblas*.so*",
    ]
    for pattern in patterns:
        found.extend(sorted(glob.glob(pattern)))
    return [path for path in dict.fromkeys(found) if os.path.isfile(path)]


def preload_openblas() -> str | None:
    """Load OpenBLAS globally once (Linux only); returns its path, or None when there is none."""
    global _preloaded, _preload_attempted
    if _preload_attempted or sys.platform != "linux":
        return _preloaded
    _preload_attempted = True
    if "mlx.core" in sys.modules:
        return None  # too late to change which BLAS mlx binds to
    for path in openblas_candidates():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _preloaded = path
        return path
    from foundry import console

    console.info(f"note: no OpenBLAS found; local models run ~30x slower on CPU ({APT_HINT})")
    return None


def import_mlx() -> ModuleType:
    """mlx.core, imported after the BLAS preload; a clear error when the extra is missing."""
    preload_openblas()
    try:
        import mlx.core as mx
    except ImportError:
        raise LocalModelError("mlx is not installed", install_hint("mlx")) from None
    return mx


def import_mlx_lm() -> ModuleType:
    import_mlx()
    try:
        import mlx_lm
    except ImportError:
        raise LocalModelError("mlx-lm is not installed", install_hint("mlx")) from None
    return mlx_lm


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def versions() -> dict[str, str]:
    """mlx and mlx-lm versions: both shape the KV values a saved cache holds."""
    mx = import_mlx()
    mlx_lm = import_mlx_lm()
    return {"mlx": str(mx.__version__), "mlx_lm": str(mlx_lm.__version__)}


def peak_memory_mb() -> float:
    mx = import_mlx()
    return mx.get_peak_memory() / (1024 * 1024)


def reset_peak_memory() -> None:
    mx = import_mlx()
    mx.reset_peak_memory()
