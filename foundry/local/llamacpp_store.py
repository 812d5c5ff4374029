"""The verified prefix store for an opaque KV state (llama.cpp's sequence state bytes) instead
of mlx arrays: the same keys, identity and token checks, CRC-32, locks, manifest and limits
as foundry.local.prefix_store, which it extends.

A state is saved as a safetensors file holding one uint8 tensor, with the store's usual
metadata in the header, so `foundry cache list/clear/prune` see it like any other entry.
Only reading and writing the payload differ from the mlx store; once PrefixCacheStore takes
a payload codec, this module shrinks to `StateCodec`.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.local.prefix_store import (
    FORMAT_VERSION,
    Lookup,
    PrefixCacheStore,
    PrefixIdentity,
    _differences,
    cache_key,
)

log = logging.getLogger(__name__)
TENSOR = "state"
HEADER_LIMIT = 64 * 1024 * 1024  # a token-id list of a 1M-token prefix fits many times over


def state_checksum(data: bytes | bytearray) -> str:
    return f"{zlib.crc32(data):08x}"


class StateCodec:
    """One opaque byte string per file, in the safetensors layout: an 8-byte little-endian
    header length, a JSON header (string metadata + one U8 tensor), then the bytes."""

    @staticmethod
    def write(path: Path, data: bytes | bytearray, metadata: dict[str, str]) -> None:
        header = {
            "__metadata__": metadata,
            TENSOR: {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]},
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)))
            handle.write(raw)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def read(path: Path) -> tuple[bytearray, dict[str, str]]:
        """The bytes and metadata; ValueError when the file is truncated or not one of ours."""
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > HEADER_LIMIT:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
            start, end = header[TENSOR]["data_offsets"]
            data = bytearray(end - start)
            handle.seek(8 + length + start)
            if handle.readinto(data) != len(data) or handle.read(1):
                raise ValueError("the state's length does not match its header")
        return data, dict(header.get("__metadata__") or {})


@dataclass
class StateLookup(Lookup):
    state: bytearray | None = None  # the saved KV state on a hit

    @property
    def hit(self) -> bool:
        return self.state is not None


class StateStore(PrefixCacheStore):
    """PrefixCacheStore whose payload is a byte string; `load` returns a StateLookup."""

    def load(self, identity: PrefixIdentity, tokens: list[int]) -> StateLookup:
        lookup = super().load(identity, tokens)
        assert isinstance(lookup, StateLookup)
        return lookup

    def _load(self, key: str, identity: PrefixIdentity, tokens: list[int]) -> StateLookup:
        path = self.path_for(key)
        if not path.is_file():
            return StateLookup(key, None, self._why_absent(identity, tokens))
        size = path.stat().st_size
        if size > self.memory_budget_bytes:
            budget_mb = self.memory_budget_bytes // (1024 * 1024)
            return StateLookup(
                key,
                None,
                f"saved prefix is {size / 1e6:.0f} MB, over prefix_cache.memory_budget_mb "
                f"({budget_mb} MB)",
            )
        started = time.perf_counter()
        try:
            data, meta = StateCodec.read(path)
            if meta.get("foundry_prefix_cache") != FORMAT_VERSION:
                return StateLookup(key, None, "saved prefix has an unknown format version")
            if state_checksum(data) != meta.get("kv_crc32"):
                self._move_aside(key, "its KV data does not match its checksum")
                return StateLookup(key, None, "corrupt: the saved prefix's checksum did not match")
            stored_identity = json.loads(meta.get("identity", "{}"))
            stored_tokens = json.loads(meta.get("token_ids", "[]"))
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            self._drop(key, f"unreadable ({type(exc).__name__}: {exc})")
            return StateLookup(key, None, f"saved prefix file was corrupt and was removed ({exc})")
        if stored_identity != identity.fields:
            changed = ", ".join(_differences(stored_identity, identity.fields))
            return StateLookup(key, None, f"model identity differs ({changed})")
        if stored_tokens != tokens:
            return StateLookup(key, None, "stored token ids differ from the prompt's prefix")
        try:
            prefill_ms: float | None = float(meta["prefill_ms"])
        except (KeyError, ValueError):
            prefill_ms = None
        load_ms = (time.perf_counter() - started) * 1000
        return StateLookup(key, None, "hit", load_ms, size, prefill_ms, state=data)

    def save(  # type: ignore[override]  # the payload is bytes, not an mlx cache
        self,
        identity: PrefixIdentity,
        tokens: list[int],
        cache: bytes | bytearray,
        prefill_ms: float | None = None,
    ) -> int:
        """Save a state holding exactly `tokens`; bytes written, 0 if not (a save is optional)."""
        key = cache_key(identity, tokens)
        if len(cache) > min(self.memory_budget_bytes, self.max_bytes):
            log.info("prefix cache not saved: %d bytes is over the store's limits", len(cache))
            return 0
        self._clean_temps()
        temp = self.dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        metadata: dict[str, Any] = {
            "foundry_prefix_cache": FORMAT_VERSION,
            "identity": json.dumps(identity.fields, sort_keys=True),
            "identity_digest": identity.digest,
            "token_ids": json.dumps(tokens, separators=(",", ":")),
            "n_tokens": str(len(tokens)),
            "kv_crc32": state_checksum(cache),
        }
        if prefill_ms is not None:
            metadata["prefill_ms"] = f"{prefill_ms:.3f}"
        try:
            StateCodec.write(temp, cache, metadata)
            size = temp.stat().st_size
            os.replace(temp, self.path_for(key))
        except OSError as exc:
            temp.unlink(missing_ok=True)
            log.warning("prefix cache not saved: %s", exc)
            return 0
        self.manifest.add(key, self._entry(identity, tokens, size))
        self.enforce_limits(keep=key)
        return size
