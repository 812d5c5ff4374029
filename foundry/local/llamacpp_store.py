"""The prefix store's codec for an opaque KV state (llama.cpp's sequence state bytes): the
store (foundry.local.prefix_store) keeps its keys, identity and token checks, CRC-32, locks,
manifest and limits; only reading and writing the payload differ from mlx arrays.

A state is saved as a safetensors file holding one uint8 tensor, with the store's usual
metadata in the header, so `foundry cache list/clear/prune` see it like any other entry.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from pathlib import Path

TENSOR = "state"
HEADER_LIMIT = 64 * 1024 * 1024  # a token-id list of a 1M-token prefix fits many times over


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
    def checksum(data: bytes | bytearray | memoryview) -> str:
        return f"{zlib.crc32(data):08x}"

    @staticmethod
    def nbytes(data: bytes | bytearray | memoryview) -> int:
        return len(data)

    @staticmethod
    def holds(data: bytes | bytearray | memoryview, n_tokens: int) -> bool:
        return True  # the engine checks the positions a state holds when it restores it

    @staticmethod
    def read(path: Path) -> tuple[memoryview, dict[str, str]]:
        """The state's bytes and the metadata; ValueError when the file is truncated or not
        one of ours. The bytes are a private copy-on-write map of the file, so nothing is
        copied before llama.cpp copies them into its KV buffer (the store writes files by
        rename, never in place, so a mapped file never changes under it)."""
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) != 8:
                raise ValueError("truncated header")
            (length,) = struct.unpack("<Q", head)
            if length > HEADER_LIMIT:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
            start, end = header[TENSOR]["data_offsets"]
            offset = 8 + length
            if not 0 <= start <= end or offset + end != size:
                raise ValueError("the state's length does not match its header")
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        return memoryview(mapped)[offset + start : offset + end], dict(
            header.get("__metadata__") or {}
        )
