"""A GGUF is checked in pure Python before mlx reads it: every crafted count, length, shape
or offset is one clear error, never a crash; consistent files (llama.cpp's layout) pass."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from foundry.errors import LocalModelError
from foundry.local.gguf_check import check_gguf_bytes, validate_gguf

U32, U64, STRING, ARRAY = 4, 10, 8, 9
F32, Q4_0 = 0, 2


def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", kind) + payload


def _tensor(name: str, dims: list[int], kind: int, offset: int) -> bytes:
    head = _str(name) + struct.pack("<I", len(dims))
    return head + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", kind, offset)


def gguf(
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    data: bytes = b"",
    *,
    version: int = 3,
    tensor_count: int | None = None,
    kv_count: int | None = None,
    alignment: int = 32,
) -> bytes:
    kvs = [_kv("general.architecture", STRING, _str("llama"))] if kvs is None else kvs
    tensors = [] if tensors is None else tensors
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(tensors) if tensor_count is None else tensor_count,
        len(kvs) if kv_count is None else kv_count,
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % alignment) + data


def valid() -> bytes:
    """Metadata of every shape llama.cpp writes, an F32 and a Q4_0 tensor, and their data."""
    kvs = [
        _kv("general.architecture", STRING, _str("llama")),
        _kv("llama.block_count", U32, struct.pack("<I", 1)),
        _kv("general.alignment", U32, struct.pack("<I", 32)),
        _kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2) + _str("a") + _str("b")),
        _kv("tokenizer.ggml.scores", ARRAY, struct.pack("<IQ", 6, 2) + struct.pack("<2f", 0, 1)),
    ]
    tensors = [
        _tensor("blk.0.attn_norm.weight", [8], F32, 0),
        _tensor("blk.0.attn_q.weight", [64, 2], Q4_0, 32),
    ]
    return gguf(kvs, tensors, b"\1" * 32 + b"\2" * 72)


def refused(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    with pytest.raises(LocalModelError) as caught:
        validate_gguf(path)
    message = str(caught.value)
    assert message.startswith("cannot read model.gguf as GGUF: ") and "\n" not in message
    return message


def test_a_consistent_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(valid())
    validate_gguf(path)


def test_the_35_byte_file_from_the_report_is_refused(tmp_path: Path) -> None:
    # Version 3, no tensors, one key whose length is 2^40: mlx.load segfaulted on it.
    crafted = b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**40) + b"abc"
    assert len(crafted) == 35
    assert "metadata count is 1" in refused(tmp_path, crafted)
    padded = crafted + b"\0" * 40  # enough bytes for the count: the length itself is caught
    assert "declares 1,099,511,627,776 bytes" in refused(tmp_path, padded)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GGML" + b"\0" * 40, "magic"),
        (b"GGUF\3\0\0", "shorter than any GGUF header"),
        (gguf(version=1), "version 1 is not supported"),
        (gguf(tensor_count=2**62), "tensor count is 4,611,686,018,427,387,904"),
        (gguf(kv_count=2**60), "metadata count is"),
        (gguf([_kv("k", STRING, struct.pack("<Q", 2**50))]), "the value of 'k' declares"),
        (gguf([_kv("k", ARRAY, struct.pack("<IQ", U32, 2**61))]), "the length of the array 'k'"),
        (
            gguf([_kv("k", ARRAY, struct.pack("<IQ", STRING, 2) + _str("a") + b"\xff" * 8)]),
            "a string in 'k' declares",
        ),
        (gguf([_kv("k", ARRAY, struct.pack("<IQ", ARRAY, 1))]), "unsupported element type 9"),
        (gguf([_kv("k", 13, b"\0" * 8)]), "unknown value type 13"),
        (gguf([_kv("general.alignment", U32, struct.pack("<I", 24))]), "not a power of two"),
        (gguf(tensors=[_tensor("t", [], F32, 0)]), "has 0 dimensions"),
        (gguf(tensors=[_tensor("t", [1, 1, 1, 1, 1], F32, 0)]), "has 5 dimensions"),
        (gguf(tensors=[_tensor("t", [4, 0], F32, 0)]), "has a dimension of 0"),
        (gguf(tensors=[_tensor("t", [4], 99, 0)]), "unsupported type 99"),
        (gguf(tensors=[_tensor("t", [33], Q4_0, 0)]), "not whole blocks"),
        (gguf(tensors=[_tensor("t", [4], F32, 8)], data=b"\0" * 64), "not aligned to 32"),
        (gguf(tensors=[_tensor("t", [2**40], F32, 0)], data=b"\0" * 64), "needs bytes up to"),
        (
            gguf(tensors=[_tensor("t", [4], F32, 0), _tensor("t", [4], F32, 32)], data=b"\0" * 64),
            "tensor 't' appears twice",
        ),
    ],
)
def test_crafted_files_are_refused_with_the_reason(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    assert expected in refused(tmp_path, data)


def test_every_truncation_of_a_valid_file_is_refused() -> None:
    data = valid()
    check_gguf_bytes(data)
    for size in range(len(data)):
        with pytest.raises(ValueError):
            check_gguf_bytes(data[:size])


@pytest.mark.mlx
def test_import_gguf_refuses_a_crafted_file_in_one_line_instead_of_crashing(
    tmp_path: Path, cli
) -> None:
    crafted = tmp_path / "evil.gguf"
    crafted.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**40) + b"\0" * 40)
    result = cli("models", "import-gguf", str(crafted))
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot read evil.gguf as GGUF: metadata key 0" in errors[0]
