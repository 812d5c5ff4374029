"""llama.cpp's threads for one context: a thread pool that sleeps instead of spinning while
it waits (poll 0), sized for every core, of which each request uses this process's fair
share (cpu_share.py says why and what it measured). llama-cpp-python does not expose ggml's
thread-pool calls, so they are reached in the libraries it ships; where they are missing the
context keeps llama.cpp's own pool and only the share applies."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

from foundry.local.cpu_share import CpuShare

log = logging.getLogger(__name__)
_MAX_THREADS = 512  # GGML_MAX_N_THREADS: the size of ggml_threadpool_params.cpumask


class _PoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * _MAX_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def _libraries(llama_cpp: Any) -> tuple[Any, Any, Any] | None:
    directory = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    try:
        base = ctypes.CDLL(os.path.join(directory, "libggml-base.so"))
        cpu = ctypes.CDLL(os.path.join(directory, "libggml-cpu.so"))
        llama = ctypes.CDLL(os.path.join(directory, "libllama.so"))
        base.ggml_threadpool_params_default.restype = _PoolParams
        base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_PoolParams)]
        cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p] * 3
        llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError) as exc:  # another build of llama.cpp (macOS: .dylib)
        log.debug("no ggml thread-pool calls here (%s): llama.cpp's own pool is used", exc)
        return None
    return base, cpu, llama


class ContextThreads:
    """The threads of one llama.cpp context: attached at load, fitted before each request,
    released before the context is freed."""

    def __init__(self, llama_cpp: Any, ctx: Any, *, cores: int, fixed: int | None) -> None:
        self.llama_cpp, self.ctx = llama_cpp, ctx
        self.fixed = fixed
        self.share = CpuShare(cores)
        self.current: int | None = None
        self.pool: int | None = None
        self._libs = _libraries(llama_cpp)
        if self._libs is not None:
            base, cpu, llama = self._libs
            params = base.ggml_threadpool_params_default(max(cores, fixed or 1))
            params.poll = 0  # sleep while waiting: a busy machine gets the core back
            self.pool = cpu.ggml_threadpool_new(ctypes.byref(params))
            if self.pool:
                llama.llama_attach_threadpool(ctx, self.pool, self.pool)
        self.fit()

    def fit(self) -> int:
        """Use the configured number, else this process's share of the cores now."""
        wanted = self.fixed or self.share.threads()
        if wanted != self.current:
            self.llama_cpp.llama_set_n_threads(self.ctx, wanted, wanted)
            self.current = wanted
        return wanted

    def close(self) -> None:
        if self.pool and self._libs is not None:
            _base, cpu, llama = self._libs
            llama.llama_detach_threadpool(self.ctx)
            cpu.ggml_threadpool_free(self.pool)
            self.pool = None
        self.share.close()
