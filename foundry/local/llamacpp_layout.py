"""The layout of llama.cpp's sequence state, so a state can be cut into token blocks and put
back together: what lets the prefix store keep a shared prefix once (foundry.local.kv_blocks).

llama.cpp serialises one sequence (llama_state_seq_get_data) as: a magic number and the
sequence id, the stream count (1), the
cell count, each cell's position and sequence ids, then the flag saying whether V is stored
transposed and the layer count, every layer's K rows (one row per cell), then every layer's
V rows, or, transposed, V's elements column by column. Cells come in the order they sit in
the KV buffer, which after trims and refills is not the order of their positions.

Only the plain layout is accepted: one stream, each cell in sequence 0 alone with no extra
per-cell data, the positions exactly 0..n-1, one K and one V entry per layer, and nothing
left over. Anything else (sliding-window or recurrent caches, M-RoPE cells, a layout a newer
llama.cpp writes) raises ValueError, and the store keeps such a model's states whole.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

import numpy as np

CELL = np.dtype([("pos", "<i4"), ("n_seq", "<u4"), ("seq", "<i4")])
MAGIC = 0xAF143CD8  # llama-context.cpp's io_magic: the first word of every sequence state
POPULATE_FROM = 1024 * 1024  # smaller states: a bytearray's few faults do not matter


def state_buffer(size: int) -> mmap.mmap | bytearray:
    """A writable buffer of `size` bytes for a whole state. Most of a state copy's time is
    the kernel faulting in fresh pages one at a time: a 73 MB copy took 61-65 ms into a
    bytearray and 37-39 ms into an anonymous map faulted in at once (MAP_POPULATE; Linux),
    first copy included (llama.cpp's own copy is 10 ms of it). Such a copy sits on the next
    request's path when a conversation is parked. (Huge pages were faster once warm, 20 ms,
    but the first one in a process stalled 150 ms and parked copies got slower in the
    bench.)"""
    populate = getattr(mmap, "MAP_POPULATE", None)
    if size < POPULATE_FROM or populate is None:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)


def element_type(size: int) -> np.dtype:
    """A numpy type of `size` bytes, so a transposed V moves whole elements (an f16 as one
    uint16: several times faster than moving its two bytes as a trailing axis)."""
    return np.dtype({2: np.uint16, 4: np.uint32, 8: np.uint64}.get(size, f"V{size}"))


@dataclass(frozen=True)
class StateLayout:
    """What every state of one model and context shares: per layer, the K row's type and
    bytes, and the V row's (or, transposed, the element size and the row's length)."""

    v_trans: bool
    keys: tuple[tuple[int, int], ...]  # (ggml type, bytes per cell)
    values: tuple[tuple[int, int, int], ...]  # (ggml type, bytes per cell, elements per cell)

    @property
    def token_bytes(self) -> int:
        """KV bytes of one token in a block."""
        return sum(row for _, row in self.keys) + sum(row for _, row, _ in self.values)

    def describe(self) -> str:
        """A short fingerprint for the store's identity: blocks of another layout never mix."""
        k = ",".join(f"{t}:{r}" for t, r in self.keys)
        v = ",".join(f"{t}:{r}:{e}" for t, r, e in self.values)
        return f"v_trans={int(self.v_trans)};k={k};v={v}"


class ParsedState:
    """One state's arrays, as views of its bytes, with its cells put in position order."""

    def __init__(self, state: bytes | bytearray | memoryview, n_tokens: int) -> None:
        data = np.frombuffer(state, dtype=np.uint8)
        self._data, self._at = data, 0
        if self._u32() != MAGIC or self._i32() != 0:
            raise ValueError("not a state of sequence 0")
        if self._u32() != 1:
            raise ValueError("not one stream")
        count = self._u32()
        if count != n_tokens:
            raise ValueError(f"{count} cells for {n_tokens} tokens")
        cells = self._take(CELL.itemsize * count).view(CELL)
        if count and not (np.all(cells["n_seq"] == 1) and np.all(cells["seq"] == 0)):
            raise ValueError("cells not in sequence 0 alone")
        positions = cells["pos"].astype(np.int64)
        self.order = np.argsort(positions, kind="stable")
        if not np.array_equal(positions[self.order], np.arange(count)):
            raise ValueError("positions are not 0..n-1")
        v_trans, n_layer = self._u32(), self._u32()
        if v_trans not in (0, 1) or not 0 < n_layer <= 4096:
            raise ValueError("unexpected layer header")
        keys, self.k_rows = [], []
        for _ in range(n_layer):
            kind, row = self._i32(), self._u64()
            keys.append((kind, row))
            self.k_rows.append(self._take(row * count).reshape(count, row))
        values, self.v_rows, self.v_columns = [], [], []
        for _ in range(n_layer):
            kind = self._i32()
            if v_trans:
                element, width = self._u32(), self._u32()
                values.append((kind, element * width, width))
                raw = self._take(element * width * count).view(element_type(element))
                self.v_columns.append(raw.reshape(width, count))
            else:
                row = self._u64()
                values.append((kind, row, 0))
                self.v_rows.append(self._take(row * count).reshape(count, row))
        if self._at != len(data):
            raise ValueError(f"{len(data) - self._at} bytes left over")
        self.layout = StateLayout(bool(v_trans), tuple(keys), tuple(values))

    def _take(self, n: int) -> np.ndarray:
        if self._at + n > len(self._data):
            raise ValueError("truncated")
        piece = self._data[self._at : self._at + n]
        self._at += n
        return piece

    def _u32(self) -> int:
        return int(struct.unpack("<I", self._take(4).tobytes())[0])

    def _i32(self) -> int:
        return int(struct.unpack("<i", self._take(4).tobytes())[0])

    def _u64(self) -> int:
        return int(struct.unpack("<Q", self._take(8).tobytes())[0])

    def block(self, start: int, end: int) -> bytes:
        """The KV of positions start..end-1, in position order: each layer's K rows, then
        each layer's V rows (transposed: its columns' elements, element row by row), so
        putting blocks together copies runs of bytes, never single elements."""
        run = self.order[start:end]
        cells: slice | np.ndarray = run
        if end > start and np.all(np.diff(run) == 1):  # the usual case: one run, sliced
            cells = slice(int(run[0]), int(run[-1]) + 1)
        parts = [rows[cells] for rows in self.k_rows] + [rows[cells] for rows in self.v_rows]
        parts += [columns[:, cells] for columns in self.v_columns]
        return b"".join(np.ascontiguousarray(p).tobytes() for p in parts)


def assemble(layout: StateLayout, blocks: list[tuple[int, memoryview | bytes]]) -> np.ndarray:
    """A state llama.cpp can load holding the blocks' tokens in order, at positions 0..n-1;
    each block is (its token count, its bytes as ParsedState.block made them)."""
    total = sum(count for count, _ in blocks)
    for count, payload in blocks:
        if len(payload) != count * layout.token_bytes:
            raise ValueError("a block's size does not match its token count")
    cells = np.zeros(total, dtype=CELL)
    cells["pos"], cells["n_seq"] = np.arange(total), 1
    head = struct.pack("<IiII", MAGIC, 0, 1, total) + cells.tobytes()
    head += struct.pack("<II", int(layout.v_trans), len(layout.keys))
    layer_heads = 12 * (len(layout.keys) + len(layout.values))  # type and row size each
    # Not zeroed first: every byte is written below (a bytearray would clear them all).
    size = len(head) + layer_heads + total * layout.token_bytes
    out = np.frombuffer(state_buffer(size), dtype=np.uint8)
    out[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    at = len(head)
    views = [np.frombuffer(payload, dtype=np.uint8) for _, payload in blocks]
    offsets = [0] * len(blocks)  # where each block's next layer part starts

    def copy_rows(row: int) -> None:
        nonlocal at
        for i, (count, _) in enumerate(blocks):
            size = count * row
            out[at : at + size] = views[i][offsets[i] : offsets[i] + size]
            offsets[i] += size
            at += size

    for kind, row in layout.keys:
        out[at : at + 12] = np.frombuffer(struct.pack("<iQ", kind, row), dtype=np.uint8)
        at += 12
        copy_rows(row)
    for kind, row, width in layout.values:
        if not layout.v_trans:
            out[at : at + 12] = np.frombuffer(struct.pack("<iQ", kind, row), dtype=np.uint8)
            at += 12
            copy_rows(row)
            continue
        element = row // width
        out[at : at + 12] = np.frombuffer(struct.pack("<iII", kind, element, width), np.uint8)
        at += 12
        as_elements = element_type(element)
        columns = out[at : at + total * row].view(as_elements).reshape(width, total)
        filled = 0
        for i, (count, _) in enumerate(blocks):
            size = count * row
            piece = views[i][offsets[i] : offsets[i] + size].view(as_elements)
            columns[:, filled : filled + count] = piece.reshape(width, count)
            offsets[i] += size
            filled += count
        at += total * row
    if at != len(out):
        raise ValueError("the layout does not add up")
    return out
