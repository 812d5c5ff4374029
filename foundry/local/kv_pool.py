"""The in-memory KV caches of a local model (L1): an LRU bounded by entries and bytes.

State it owns: the entries (a KV cache and exactly the token ids it holds), their order
(least recently used first), and what each was used for (hits, age, bytes).

A request takes the entry that shares the longest token prefix with its prompt. When the
prompt extends the whole entry, the entry is handed over and grows in place; when the prompt
diverges inside it, only the shared part is copied out, so the other conversation keeps its
cache. An entry that a newer one extends is dropped: the newer one holds all its tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from foundry.local.chat import common_prefix_length


def cache_nbytes(cache: list[Any]) -> int:
    """Bytes the arrays of a KV cache hold (buffers are allocated ahead in steps)."""
    total = 0
    for layer in cache:
        try:
            total += int(layer.nbytes)
        except (AttributeError, NotImplementedError):
            continue
    return total


def copy_prefix(cache: list[Any], length: int) -> list[Any] | None:
    """A new cache holding the first `length` positions of `cache`, or None when its layers
    cannot be sliced (a rotating cache that has wrapped, or a state-space layer)."""
    from mlx_lm.models.cache import KVCache

    if not all(type(layer) is KVCache and layer.offset >= length for layer in cache):
        return None
    copied = []
    for layer in cache:
        fresh = KVCache()
        if length:
            fresh.state = (
                layer.keys[..., :length, :],
                layer.values[..., :length, :],
                length,
            )
        copied.append(fresh)
    return copied


def trim_to(cache: list[Any], length: int, held: int) -> bool:
    """Trim `cache` (holding `held` tokens) back to `length` in place; False if it cannot."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    excess = held - length
    if not excess:
        return True
    return bool(can_trim_prompt_cache(cache)) and trim_prompt_cache(cache, excess) == excess


@dataclass
class KVEntry:
    tokens: list[int]
    cache: list[Any]
    nbytes: int
    prompt_length: int | None = None  # the prompt it was made for (the rest is its reply)
    hits: int = 0
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "tokens": len(self.tokens),
            "bytes": self.nbytes,
            "hits": self.hits,
            "age_s": round(now - self.created, 1),
            "idle_s": round(now - self.last_used, 1),
        }


@dataclass
class Taken:
    """A cache handed to one request: `tokens` is exactly what it holds now."""

    cache: list[Any]
    tokens: list[int]
    source: str  # "extended" (the entry itself), "copied" or "trimmed" (the entry, cut back)


class KVPool:
    def __init__(
        self,
        max_entries: int,
        max_bytes: int | None = None,
        measure: Callable[[Any], int] = cache_nbytes,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.measure = measure  # the bytes an entry's cache holds (mlx arrays by default)
        self._entries: list[KVEntry] = []  # least recently used first
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries)

    @property
    def newest(self) -> KVEntry | None:
        return self._entries[-1] if self._entries else None

    def best(self, tokens: list[int]) -> tuple[KVEntry | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that length (never all of
        `tokens`: the model needs at least one new token to give logits)."""
        chosen, longest = None, 0
        for entry in self._entries:
            common = min(common_prefix_length(entry.tokens, tokens), len(tokens) - 1)
            if common > longest:
                chosen, longest = entry, common
        return chosen, longest

    def take(self, entry: KVEntry, common: int, *, copy_allowed: bool) -> Taken | None:
        """Hand `common` tokens of `entry` to a request (see the module docstring)."""
        entry.hits += 1
        entry.last_used = time.monotonic()
        if common == len(entry.tokens):
            self._entries.remove(entry)
            return Taken(entry.cache, entry.tokens, "extended")
        if copy_allowed and self.max_entries > 1:
            copied = copy_prefix(entry.cache, common)
            if copied is not None:
                return Taken(copied, entry.tokens[:common], "copied")
        if not trim_to(entry.cache, common, len(entry.tokens)):
            return None
        self._entries.remove(entry)
        del entry.tokens[common:]
        return Taken(entry.cache, entry.tokens, "trimmed")

    def lend(self, entry: KVEntry) -> None:
        """`entry` is read without being handed over (a copy of its prefix is made from it):
        it counts as used and stays in the pool, now the most recently used."""
        entry.hits += 1
        entry.last_used = time.monotonic()
        self._entries.remove(entry)
        self._entries.append(entry)

    def put(self, tokens: list[int], cache: list[Any], prompt_length: int | None = None) -> None:
        """Keep a request's cache. Entries it extends are dropped, then the least recently used
        ones while over the entry or byte bound (the new one is kept even if alone too big:
        the memory guard decided it may exist)."""
        if self.max_entries < 1:
            return
        self._entries = [
            e
            for e in self._entries
            if not (len(e.tokens) <= len(tokens) and tokens[: len(e.tokens)] == e.tokens)
        ]
        self._entries.append(KVEntry(tokens, cache, self.measure(cache), prompt_length))
        while len(self._entries) > self.max_entries:
            self._evict_oldest()
        while self.max_bytes is not None and self.nbytes > self.max_bytes and len(self) > 1:
            self._evict_oldest()

    def make_room(self, needed: int, budget: int, keep: KVEntry | None = None) -> bool:
        """Evict least recently used entries (never `keep`) until `needed` more bytes fit in
        `budget`; False when they cannot fit even with every other entry gone."""
        while self.nbytes + needed > budget:
            victims = [e for e in self._entries if e is not keep]
            if not victims:
                return False
            self._entries.remove(victims[0])
            self.evictions += 1
        return True

    def clear(self, keep: Callable[[KVEntry], bool] = lambda e: False) -> None:
        self._entries = [e for e in self._entries if keep(e)]

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [e.describe(now) for e in reversed(self._entries)]

    def _evict_oldest(self) -> None:
        self._entries.pop(0)
        self.evictions += 1
