"""A GGUF file checked in pure Python before anything native reads it.

mlx's GGUF reader trusts the file: a crafted count or length (a 35-byte file declaring a
2^40-byte key) makes it allocate or read past the end and crash the process. This walks
the header the way the format defines it (magic, version, counts, every metadata string and
array, every tensor's dimensions, type and offset) and checks each length against what is
left of the file, so a bad file is one error line, never a crash. Nothing is allocated
in proportion to a declared length; the file is memory-mapped, not read.

A well-formed header can still describe a model no engine survives: llama.cpp aborts the
process (GGML_ASSERT, no message) on 100,000 layers or a repeated token, and mlx builds
whatever config.json says (100,000 layers: bad_alloc after 7.6 GB). foundry.local.gguf_fields
checks those fields against llama.cpp's own limits after this walk.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from foundry.errors import LocalModelError
from foundry.local.gguf_fields import GGUFArray, GGUFInvalid, check_fields

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# Metadata value types with a fixed size (their struct formats); 8 is a string, 9 an array
# (of scalars or strings: llama.cpp writes no arrays of arrays).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY = 8, 9
# ggml tensor types foundry knows the size of: id -> (name, elements per block, bytes per block).
TENSOR_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}


class _Reader:
    """Little-endian reads from a buffer, each checked against the end."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data)

    @property
    def left(self) -> int:
        return self.size - self.pos

    def take(self, fmt: str, what: str) -> int | float | bool:
        width = struct.calcsize("<" + fmt)
        if width > self.left:
            raise GGUFInvalid(f"the file ends inside {what} (at byte {self.pos:,})")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += width
        return value

    def count(self, what: str, each: int) -> int:
        """A u64 count of items of at least `each` bytes that must fit in the rest."""
        n = int(self.take("Q", what))
        if n * each > self.left:
            raise GGUFInvalid(
                f"{what} is {n:,}, more than the {self.left:,} bytes left in the file can hold"
            )
        return n

    def string(self, what: str) -> bytes:
        length = int(self.take("Q", f"the length of {what}"))
        if length > self.left:
            raise GGUFInvalid(
                f"{what} declares {length:,} bytes; only {self.left:,} are left in the file"
            )
        start = self.pos
        self.pos += length
        return bytes(self.data[start : self.pos])

    def skip_string(self, what: str) -> int:
        """Skip a string; returns its length."""
        length = int(self.take("Q", f"the length of {what}"))
        if length > self.left:
            raise GGUFInvalid(
                f"{what} declares {length:,} bytes; only {self.left:,} are left in the file"
            )
        self.pos += length
        return length


Value = int | float | bool | str | GGUFArray | None
_U64 = struct.Struct("<Q")


def _skip_strings(reader: _Reader, n: int, key: str) -> None:
    """skip_string n times, in one loop: vocabularies hold 150,000 strings and more."""
    data, pos, size, unpack = reader.data, reader.pos, reader.size, _U64.unpack_from
    for _ in range(n):
        if pos + 8 > size:
            reader.pos = pos
            raise GGUFInvalid(f"the file ends inside a string in '{key}' (at byte {pos:,})")
        (length,) = unpack(data, pos)
        pos += 8
        if length > size - pos:
            raise GGUFInvalid(
                f"a string in '{key}' declares {length:,} bytes; only {size - pos:,} are left "
                "in the file"
            )
        pos += length
    reader.pos = pos


def _value(reader: _Reader, kind: int, key: str) -> Value:
    """Read one metadata value: scalars, strings up to 1 KiB (None when longer: templates and
    the like, which no check needs), arrays as where they are (GGUFArray), not their items."""
    if kind in _SCALARS:
        return reader.take(_SCALARS[kind], f"the value of '{key}'")
    if kind == STRING:
        start = reader.pos + 8
        length = reader.skip_string(f"the value of '{key}'")
        return (
            bytes(reader.data[start : start + length]).decode("utf-8", "replace")
            if (length <= 1024)
            else None
        )
    if kind != ARRAY:
        raise GGUFInvalid(f"'{key}' has an unknown value type {kind}")
    element = int(reader.take("I", f"the element type of '{key}'"))
    if element in _SCALARS:
        width = struct.calcsize("<" + _SCALARS[element])
        n = reader.count(f"the length of the array '{key}'", width)
        start = reader.pos
        reader.pos += n * width
    elif element == STRING:
        n = reader.count(f"the length of the array '{key}'", 8)
        start = reader.pos
        _skip_strings(reader, n, key)
    else:
        raise GGUFInvalid(f"the array '{key}' has an unsupported element type {element}")
    return GGUFArray(element, n, start)


def _tensor_bytes(name: str, dims: list[int], kind: int) -> int:
    if kind not in TENSOR_TYPES:
        raise GGUFInvalid(f"tensor '{name}' has an unsupported type {kind}")
    type_name, block, block_bytes = TENSOR_TYPES[kind]
    elements = 1
    for dim in dims:
        if dim <= 0:
            raise GGUFInvalid(f"tensor '{name}' has a dimension of {dim}")
        elements *= dim
    if dims[0] % block:
        raise GGUFInvalid(f"tensor '{name}' ({type_name}) has rows of {dims[0]}, not whole blocks")
    return elements // block * block_bytes


def check_gguf_bytes(data: mmap.mmap | bytes) -> None:
    """Raise GGUFInvalid naming the first problem, or return when the file is consistent:
    its structure here, then its model fields (foundry.local.gguf_fields)."""
    reader = _Reader(data)
    if reader.size < 24 or bytes(data[:4]) != MAGIC:
        raise GGUFInvalid("the file does not start with the GGUF magic bytes")
    reader.pos = 4
    version = int(reader.take("I", "the version"))
    if version not in VERSIONS:
        raise GGUFInvalid(f"GGUF version {version} is not supported (only 2 and 3)")
    tensors = int(reader.take("Q", "the tensor count"))
    keys = reader.count("the metadata count", 13)  # key length, type and a 1-byte value
    if tensors * 32 > reader.left:  # name length, dims, one dim, type, offset
        raise GGUFInvalid(f"the tensor count is {tensors:,}, more than the file can hold")
    alignment = DEFAULT_ALIGNMENT
    meta: dict[str, Value] = {}
    for index in range(keys):
        key = reader.string(f"metadata key {index}").decode("utf-8", errors="replace")
        kind = int(reader.take("I", f"the type of '{key}'"))
        value = meta[key] = _value(reader, kind, key)
        if key == "general.alignment":
            if kind != 4 or not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise GGUFInvalid(f"general.alignment is {value!r}, not a power of two")
            alignment = value
    extents: list[tuple[int, int, str]] = []
    shapes: dict[str, list[int]] = {}
    for index in range(tensors):
        name = reader.string(f"the name of tensor {index}").decode("utf-8", errors="replace")
        if name in shapes:
            raise GGUFInvalid(f"tensor '{name}' appears twice")
        n_dims = int(reader.take("I", f"the dimensions of '{name}'"))
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFInvalid(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS})")
        dims = [int(reader.take("Q", f"a dimension of '{name}'")) for _ in range(n_dims)]
        kind = int(reader.take("I", f"the type of '{name}'"))
        offset = int(reader.take("Q", f"the offset of '{name}'"))
        if offset % alignment:
            raise GGUFInvalid(f"tensor '{name}' starts at {offset}, not aligned to {alignment}")
        extents.append((offset, _tensor_bytes(name, dims, kind), name))
        shapes[name] = dims
    data_start = -(-reader.pos // alignment) * alignment
    for offset, size, name in extents:
        end = data_start + offset + size
        if end > reader.size:
            raise GGUFInvalid(
                f"tensor '{name}' needs bytes up to {end:,}; the file has {reader.size:,}"
            )
    check_fields(data, meta, shapes)


def validate_gguf(path: Path) -> None:
    """LocalModelError (one line) unless `path` is a GGUF file whose header is consistent."""
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            if size < 24:
                raise GGUFInvalid(f"the file is {size} bytes, shorter than any GGUF header")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                check_gguf_bytes(data)
    except GGUFInvalid as exc:
        raise LocalModelError(
            f"cannot read {path.name} as GGUF: {exc}",
            "nothing was loaded; re-download or re-export the file",
        ) from None
    except OSError as exc:
        raise LocalModelError(
            f"cannot read {path.name}: {exc.strerror or exc}", "check the path and permissions"
        ) from None
