"""The memory guard for a local model's KV caches: what a request's cache will take, measured
on the model itself, and room made for it in the in-memory LRU, or a refusal.

State it owns: the KV bytes per token, measured once on a one-token cache (any architecture,
any dtype). A request needs its KV cache at prompt + reply tokens, in the cache's 256-token
allocation steps, plus the scratch of a prefill chunk's attention scores.
"""

from __future__ import annotations

import math
from typing import Any

from foundry.errors import BackendError
from foundry.local.kv_pool import KVEntry, KVPool

OVERLOADED = "overloaded"  # the error class of a request that cannot fit the budget
KV_STEP = 256  # mlx-lm's KV caches grow in steps of this many positions


class KVMemory:
    def __init__(self, loaded: Any, max_kv_size: int | None) -> None:
        self.loaded = loaded
        self.max_kv_size = max_kv_size
        self._token_bytes: float | None = None

    @property
    def token_bytes(self) -> float:
        """KV bytes per token; 0 when the cache's layers do not expose their arrays."""
        if self._token_bytes is None:
            self._token_bytes = self._measure()
        return self._token_bytes

    def _measure(self) -> float:
        from foundry.local.engine import prefill

        cache = self.loaded.make_cache()
        prefill(self.loaded.model, cache, [0])
        total = 0.0
        for layer in cache:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            shape = getattr(keys, "shape", None)
            if keys is None or values is None or not shape or len(shape) < 3 or not shape[2]:
                return 0.0
            total += (keys.nbytes + values.nbytes) / shape[2]
        return total

    def kv_bytes(self, positions: int) -> int:
        """Bytes a cache of `positions` tokens holds (0 while unknown)."""
        if not self.token_bytes:
            return 0
        if self.max_kv_size is not None:  # a rotating cache never grows past it
            positions = min(positions, self.max_kv_size)
        return int(math.ceil(positions / KV_STEP) * KV_STEP * self.token_bytes)

    def working_bytes(self, positions: int) -> int:
        """Scratch memory of a prefill chunk's attention scores over `positions` keys."""
        from foundry.local.engine import PREFILL_STEP

        heads = self.loaded.config.get("num_attention_heads") or 0
        return int(min(PREFILL_STEP, positions) * positions * heads * 4 * 2)

    def needed(self, positions: int) -> int:
        return self.kv_bytes(positions) + self.working_bytes(positions)

    def guard(
        self,
        pool: KVPool,
        budget: int | None,
        positions: int,
        entry: KVEntry | None,
        extending: bool,
    ) -> KVEntry | None:
        """Make room for a request of `positions` tokens by evicting the least recently used
        caches; returns the entry still safe to reuse (None: the request must start cold).
        Raises "overloaded" when it cannot fit even with every other cache evicted."""
        if budget is None:
            return entry
        needed = self.needed(positions)
        own = entry.nbytes if entry is not None and extending else 0
        if pool.make_room(max(needed - own, 0), budget, keep=entry):
            return entry
        if entry is not None and pool.make_room(needed, budget, keep=None):
            return None  # it fits cold, without the cache it would have extended
        raise BackendError(
            f"this request needs ~{needed / 1e6:,.0f} MB for its KV cache ({positions:,} "
            f"tokens with the reply), over the server's memory budget of {budget / 1e6:,.0f} MB",
            "send a shorter conversation or a lower max_tokens, or raise "
            "serve.memory_budget_mb in cache_config.json",
            error_class=OVERLOADED,
        )
