"""The prefix store's codec for mlx-lm prompt caches (a list of per-layer KV caches), saved
as safetensors files, with the CRC-32 of their KV arrays that every load checks."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, cast

from foundry.local.runtime import import_mlx


def kv_checksum(cache: list[Any]) -> str:
    """CRC-32 of every KV array's bytes, in order: ~4 GB/s, a few tens of ms for a 6k-token
    prefix (a cryptographic hash would cost more than loading the file)."""
    mx = import_mlx()
    from mlx.utils import tree_flatten

    crc = 0
    # Nested states (quantized caches keep tuples) flattened; numbers some caches keep
    # beside their arrays left out. A view (a copied prefix) is made contiguous first.
    leaves = cast("list[tuple[str, Any]]", tree_flatten([layer.state for layer in cache]))
    for _, value in leaves:
        if isinstance(value, mx.array):
            crc = zlib.crc32(memoryview(mx.contiguous(value)), crc)
    return f"{crc:08x}"


class MlxCodec:
    """How the store reads and writes its payload: here mlx-lm prompt caches (a list of
    per-layer KV caches) as safetensors files. Another engine brings its own codec with the
    same five methods; keys, identity, token checks, locks and limits stay the store's."""

    @staticmethod
    def read(path: Path) -> tuple[Any, dict[str, str]]:
        mx = import_mlx()
        from mlx_lm.models.cache import load_prompt_cache

        cache, meta = load_prompt_cache(str(path), return_metadata=True)
        mx.eval([layer.state for layer in cache])  # force the read: truncation fails here
        return cache, meta

    @staticmethod
    def write(path: Path, cache: Any, metadata: dict[str, str]) -> None:
        from mlx_lm.models.cache import save_prompt_cache

        save_prompt_cache(str(path), cache, metadata)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())

    @staticmethod
    def checksum(cache: Any) -> str:
        import_mlx().eval([layer.state for layer in cache])
        return kv_checksum(cache)

    @staticmethod
    def nbytes(cache: Any) -> int:
        return sum(getattr(layer, "nbytes", 0) for layer in cache)

    @staticmethod
    def holds(cache: Any, n_tokens: int) -> bool:
        """Whether the payload's KV length is `n_tokens`."""
        return {getattr(layer, "offset", n_tokens) for layer in cache} == {n_tokens}
