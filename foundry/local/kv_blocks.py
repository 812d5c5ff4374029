"""llama.cpp's saved states, stored as token blocks: a prefix that many conversations share is
on disk once, and each conversation adds only the blocks of its own tokens.

A prefix of n tokens is its full blocks of BLOCK_TOKENS tokens, then a tail block of the
n mod BLOCK_TOKENS tokens left. A block's key hashes the model's identity, the key of the
block before it and its own token ids, so a key names one exact token prefix, as vLLM's and
LMCache's prefix caches key their blocks. Each block is an entry of the verified prefix store
(foundry.local.prefix_store): its identity (with its parent's key) and token ids are checked
on every load, its KV data against its CRC-32, and it obeys the store's limits and commands.

A state is put back together from its blocks (foundry.local.llamacpp_layout) and handed to
llama.cpp, which takes it as it takes a state it wrote itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from foundry.local.llamacpp_layout import ParsedState, StateLayout, assemble
from foundry.local.manifest import PAYLOAD, regular_size
from foundry.local.prefix_store import Lookup, PrefixIdentity, cache_key, prefix_keys

log = logging.getLogger(__name__)
BLOCK_TOKENS = 256  # a second session re-stores at most this many of the tokens it shares


@dataclass(frozen=True)
class Block:
    start: int
    end: int
    identity: PrefixIdentity  # the model's, with the parent block's key
    key: str


def probe_layout(engine: Any) -> StateLayout | None:
    """The layout of this context's states, read off a one-token state (None when llama.cpp
    writes a layout foundry does not cut into blocks: such states are stored whole)."""
    engine.trim(0)
    try:
        engine.feed([max(engine.bos, 0)])
        return ParsedState(engine.save_state(), 1).layout
    except ValueError as exc:
        log.info("llama.cpp states of this model are stored whole: %s", exc)
        return None
    finally:
        engine.trim(0)


class BlockStore:
    """The prefix store's interface (has, load, save, lock, stats) over token blocks, plus
    `stored_length`: how much of a prompt the blocks on disk hold."""

    def __init__(self, store: Any, layout: StateLayout, block_tokens: int = BLOCK_TOKENS):
        self.store = store
        self.layout = layout
        self.block_tokens = block_tokens
        self._layout_digest = hashlib.sha256(layout.describe().encode()).hexdigest()[:16]

    @property
    def codec(self) -> Any:
        return self.store.codec

    def lock(self, key: str) -> AbstractContextManager[None]:
        return self.store.lock(key)

    def stats(self) -> dict[str, Any]:
        return {**self.store.stats(), "block_tokens": self.block_tokens}

    def _identity(self, identity: PrefixIdentity, parent: str) -> PrefixIdentity:
        fields = {
            **identity.fields,
            "layout": self._layout_digest,
            "block_tokens": self.block_tokens,
            "parent": parent,
        }
        return PrefixIdentity(fields=fields, model=identity.model)

    def _blocks(self, identity: PrefixIdentity, tokens: list[int]) -> Iterator[Block]:
        """The blocks that hold exactly `tokens`: the full ones, then the tail if any."""
        parent = ""
        for start in range(0, len(tokens), self.block_tokens):
            end = min(start + self.block_tokens, len(tokens))
            block_identity = self._identity(identity, parent)
            key = cache_key(block_identity, tokens[start:end])
            yield Block(start, end, block_identity, key)
            parent = key

    def _exists(self, block: Block) -> bool:
        return regular_size(self.store.path_for(block.key)) is not None

    def has(self, identity: PrefixIdentity, tokens: list[int]) -> bool:
        """Whether every block of exactly `tokens` is on disk (no read, no verification)."""
        return bool(tokens) and all(self._exists(b) for b in self._blocks(identity, tokens))

    def stored_length(self, identity: PrefixIdentity, tokens: list[int], limit: int) -> int:
        """The longest prefix of `tokens`, at most `limit` long, whose blocks are all on disk:
        the full blocks from the start while they are there, then the longest tail after
        them (a prefix saved at a breakpoint, or a conversation's last tokens)."""
        held, parent = 0, ""
        full = limit - limit % self.block_tokens
        for block in self._blocks(identity, tokens[:full]):
            if not self._exists(block):
                break
            held, parent = block.end, block.key
        tail_identity = self._identity(identity, parent)
        longest = min(limit - held, self.block_tokens - 1)
        keys = prefix_keys(tail_identity, tokens[held : held + longest])
        names = set(os.listdir(self.store.dir))  # one listing, not an lstat per length
        for length in range(longest, 0, -1):
            key = keys[length - 1]
            if f"{key}{PAYLOAD}" in names and self._exists(
                Block(held, held + length, tail_identity, key)
            ):
                return held + length
        return held

    def load(self, identity: PrefixIdentity, tokens: list[int]) -> Lookup:
        """The state of exactly `tokens`, put together from its blocks, each verified."""
        started = time.perf_counter()
        blocks = list(self._blocks(identity, tokens))
        needed = len(tokens) * self.layout.token_bytes  # the state put together, in memory
        budget = self.store.memory_budget_bytes
        if needed > budget:
            reason = (
                f"saved prefix is {needed / 1e6:.0f} MB, over prefix_cache.memory_budget_mb "
                f"({budget // (1024 * 1024)} MB)"
            )
            return Lookup(blocks[-1].key if blocks else "", None, reason)
        pieces: list[tuple[int, Any]] = []
        sizes: list[int] = []
        last = None
        for number, block in enumerate(blocks, 1):
            part = tokens[block.start : block.end]
            last = self.store.load(block.identity, part, record=False)
            if not last.hit:
                reason = f"block {number} of {len(blocks)}: {last.reason}"
                return Lookup(block.key, None, reason)
            pieces.append((len(part), last.cache))
            sizes.append(last.size)
        try:
            state = assemble(self.layout, pieces)
        except ValueError as exc:
            return Lookup(blocks[-1].key, None, f"the blocks do not fit together ({exc})")
        self.store.record_hits(
            [
                (b.key, b.identity, tokens[b.start : b.end], n)
                for b, n in zip(blocks, sizes, strict=True)
            ]
        )
        load_ms = (time.perf_counter() - started) * 1000
        prefill_ms = last.prefill_ms if last is not None else None
        return Lookup(blocks[-1].key, state, "hit", load_ms, sum(sizes), prefill_ms)

    def save(
        self,
        identity: PrefixIdentity,
        tokens: list[int],
        state: Any,
        prefill_ms: float | None = None,
        *,
        prefixes: tuple[int, ...] = (),
    ) -> int:
        """Store the blocks of `tokens` that are not on disk yet, cut from `state` (which
        holds exactly `tokens`), and the tail of each shorter prefix length in `prefixes`
        (a conversation's last prompt: its client's next turn keeps it, whatever it makes
        of the reply); the bytes written (0: nothing new, or not saved)."""
        wanted: dict[str, tuple[Block, float | None]] = {}
        for length in (*prefixes, len(tokens)):
            cost = prefill_ms if length == len(tokens) else None
            for block in self._blocks(identity, tokens[:length]):
                if block.key not in wanted and not self._exists(block):
                    wanted[block.key] = (block, cost if block.end == length else None)
        if not wanted:
            return 0
        try:
            parsed = ParsedState(state, len(tokens))
        except ValueError as exc:
            log.warning("prefix cache not saved: the state is not of the probed layout (%s)", exc)
            return 0
        if parsed.layout != self.layout:
            log.warning("prefix cache not saved: the state's layout changed since the probe")
            return 0
        items = [
            (b.identity, tokens[b.start : b.end], parsed.block(b.start, b.end), cost)
            for b, cost in wanted.values()
        ]
        return int(self.store.save_many(items))


__all__ = ["BLOCK_TOKENS", "BlockStore", "probe_layout"]
