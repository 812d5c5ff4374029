"""Local models with mlx-lm: a saved, verified prefix KV cache plus in-memory multi-turn reuse.

Per request: reuse the conversation's in-memory KV cache up to the longest common token
prefix; else load the saved static prefix from the store (or compute and save it); then
prefill only the rest (always at least one token) and generate. The request itself (usage,
context window, repair turn, errors) is foundry.backends.local's.

In memory the backend keeps an LRU of KV caches (foundry.local.kv_pool): one conversation for
a build; several, across clients, for `foundry serve`, which also sets a memory budget (a
request whose KV cache cannot fit fails with error_class "overloaded" before any prefill).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from foundry.backends.base import ModelRequest
from foundry.backends.local import LocalBackend
from foundry.config import FoundryConfig, MlxConfig
from foundry.local.constrained import hf_grammar_tokenizer
from foundry.local.kv_memory import KVMemory
from foundry.local.kv_pool import KVPool, copy_prefix
from foundry.local.model_dirs import Progress, resolve_model
from foundry.local.pull import pull
from foundry.local.runtime import is_apple_silicon


def mlx_installed() -> bool:
    """Whether mlx and mlx-lm can be imported (found, not loaded: that takes a second)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("mlx", "mlx_lm"))
    except ValueError:  # a module set to None in sys.modules: blocked, as if absent
        return False


class MLXBackend(LocalBackend):
    name: ClassVar[str] = "mlx"

    def __init__(
        self,
        config: FoundryConfig,
        model: str,
        *,
        base_url: str | None = None,
        reuse_conversation: bool = True,
    ) -> None:
        super().__init__(config, model, base_url=base_url, reuse_conversation=reuse_conversation)
        # The in-memory KV caches (L1): a build keeps its one conversation.
        self._pool = KVPool(1 if reuse_conversation else 0)
        self._memory: Any = None  # KVMemory, once the model is loaded
        # The running request's cache and its tokens (handed back to the pool when cancelled).
        self._active: tuple[list[int], list[Any]] | None = None

    @classmethod
    def engine_settings(cls, config: FoundryConfig) -> MlxConfig:
        return config.mlx

    def serve_with(
        self, *, l1_entries: int, memory_budget_bytes: int | None, output_cap: int | None = None
    ) -> None:
        super().serve_with(
            l1_entries=l1_entries, memory_budget_bytes=memory_budget_bytes, output_cap=output_cap
        )
        self._pool = KVPool(l1_entries if self.reuse_conversation else 0)

    # The most recently used in-memory cache and its tokens (what the tests inspect).
    @property
    def _cache(self) -> list[Any] | None:
        newest = self._pool.newest
        return newest.cache if newest else None

    @property
    def _cache_tokens(self) -> list[int]:
        newest = self._pool.newest
        return newest.tokens if newest else []

    @_cache_tokens.setter
    def _cache_tokens(self, tokens: list[int]) -> None:
        if self._pool.newest is not None:
            self._pool.newest.tokens = tokens

    @classmethod
    def default_model(cls, config: FoundryConfig) -> str:
        return config.backend.mlx_model

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        """The embedded default (no key, no server, pulled on first use) where mlx is
        installed, or on Apple silicon, where it is the engine to install."""
        return is_apple_silicon() or mlx_installed()

    @classmethod
    def runs_model(cls, model: str) -> bool:
        """Every local model but a bare .gguf file (one is imported first, or run by
        llamacpp)."""
        return not model.lower().endswith(".gguf")

    def cache_state(self) -> dict[str, Any]:
        """The in-memory caches and the memory guard's figures, for /cache/stats."""
        from foundry.local.runtime import import_mlx

        mx = import_mlx()
        return {
            "entries": self._pool.describe(),
            "bytes": self._pool.nbytes,
            "max_entries": self._pool.max_entries,
            "evictions": self._pool.evictions,
            "kv_bytes_per_token": self._memory.token_bytes if self._memory else None,
            "memory_budget_bytes": self.memory_budget,
            "engine_memory": {
                "mlx_active_bytes": mx.get_active_memory(),
                "mlx_peak_bytes": mx.get_peak_memory(),
            },
        }

    # -- setup -------------------------------------------------------------------------------

    def _import_engine(self) -> None:
        from foundry.local.runtime import import_mlx_lm

        import_mlx_lm()

    def _find_model(self) -> None:
        resolve_model(self.model)

    def _fetch_model(self, progress: Progress) -> None:
        pull(self.model, progress=progress)

    def _load(self) -> None:
        from foundry.local.chat import ChatRenderer
        from foundry.local.engine import context_window, load_model, model_identity

        path = resolve_model(self.model)
        mlx = self.config.mlx
        self._loaded = load_model(
            path, self.model, kv_dtype=mlx.kv_dtype, max_kv_size=mlx.max_kv_size
        )
        self._renderer = ChatRenderer(self._loaded.tokenizer)
        override = self.config.models.get(self.model)
        self._context_window = context_window(
            self._loaded, override.context_window if override else None, mlx.max_kv_size
        )
        self._identity = model_identity(self._loaded, self._open_store())
        self._memory = KVMemory(self._loaded, mlx.max_kv_size)

    def _grammar_tokenizer(self) -> Any:
        loaded = self._loaded
        eos = sorted(loaded.tokenizer.eos_token_ids)
        return hf_grammar_tokenizer(loaded.tokenizer._tokenizer, loaded.vocab_size, eos)

    def close(self) -> None:
        self._pool.clear()
        super().close()

    def _reply_model(self) -> str:
        return str(self._loaded.name)

    def _reset_peak_memory(self) -> None:
        from foundry.local.runtime import reset_peak_memory

        reset_peak_memory()

    def _peak_memory_mb(self) -> float:
        from foundry.local.runtime import peak_memory_mb

        return peak_memory_mb()

    def _prepare_cache(
        self, rendered: Any, request: ModelRequest, max_tokens: int, use_store: bool
    ) -> tuple[int, dict[str, Any]]:
        """A KV cache holding a proper prefix of the prompt (self._active: exactly the
        tokens it holds, and the cache), and what it took. On the way, every cache point of the
        prompt (the system turn, and each client cache breakpoint) is saved to the store
        unless it is there already."""
        from foundry.local.engine import prefill
        from foundry.local.prefix_store import cache_key

        tokens = rendered.tokens
        store_on = use_store and self._store is not None
        with self._render_lock:
            points = self._renderer.cache_points(request, rendered) if store_on else []
        entry, common = self._pool.best(tokens)
        disk = next((p for p in reversed(points) if p > common and self._saved(tokens[:p])), None)
        positions = len(tokens) + max_tokens
        memory, budget = self._memory, self.memory_budget
        if disk is None:
            extending = entry is not None and common == len(entry.tokens)
            entry = memory.guard(self._pool, budget, positions, entry, extending)
        else:
            memory.guard(self._pool, budget, positions, None, False)
        event: dict[str, Any] = {"reused": 0, "written": 0, "prefilled": 0, "prefill_s": 0.0}
        cache: list[Any] | None = None
        held: list[int] = []
        source, reason = "none", "prefix cache off or no prefix"
        if disk is not None:
            lookup = self._store.load(self._identity, tokens[:disk])
            if lookup.hit:
                cache, held, source, reason = lookup.cache, list(tokens[:disk]), "store", "hit"
                event["load_ms"] = lookup.load_ms
                if lookup.prefill_ms is not None:
                    self._prefix_cost = (disk, lookup.prefill_ms)
        if cache is None and entry is not None and common:
            taken = self._pool.take(entry, common, copy_allowed=True)
            if taken is not None:
                cache, held, source = taken.cache, taken.tokens, "memory"
                reason = f"in-memory reuse ({taken.source})"
        if cache is None:
            cache = self._loaded.make_cache()
            if points:  # a miss: the store says why (and logs it at -v)
                reason = self._store.load(self._identity, tokens[: points[0]]).reason
        self._active = (held, cache)  # what a cancelled request hands back to the pool
        reused = len(held)
        todo = [p for p in points if not self._saved(tokens[:p])]
        ahead = [p for p in todo if p > reused]
        self._plan(tokens, reused, ahead, source, reason)
        for point in todo:
            if point <= reused:  # already in the cache: save a copy of that part
                part = copy_prefix(cache, point)
                if part is not None:
                    self._store.save(
                        self._identity, tokens[:point], part, prefill_ms=self._cost_ms(point)
                    )
        cost = self._cost_ms(reused)
        written_to = reused
        for point in ahead:
            with self._store.lock(cache_key(self._identity, tokens[:point])):
                if self._saved(tokens[:point]):  # another process saved it meanwhile
                    lookup = self._store.load(self._identity, tokens[:point])
                    if lookup.hit:
                        cache, held, source = lookup.cache, list(tokens[:point]), "store"
                        self._active = (held, cache)
                        self._prefilled(point - written_to, computed=False)  # read, not computed
                        reused = written_to = point
                        cost = lookup.prefill_ms
                        continue
                before = len(held)
                started = time.perf_counter()
                prefill(
                    self._loaded.model,
                    cache,
                    tokens[before:point],
                    stop=self._prefill_stop,
                    fed=held.extend,
                    progress=self._prefilled,
                )
                took = time.perf_counter() - started
                event["prefill_s"] += took
                event["prefilled"] += point - before
                cost = cost + took * 1000 if cost is not None else None
                if cost is not None and before == 0:
                    self._prefix_cost = (point, cost)
                if self._store.save(self._identity, tokens[:point], cache, prefill_ms=cost):
                    written_to = point
            if source == "none":
                source = "computed"
        event.update(
            source=source,
            reason=reason,
            reused=reused,
            written=max(written_to - reused, 0),
        )
        return len(held), event

    # -- one generation ----------------------------------------------------------------------

    def _token_stream(
        self,
        new_tokens: list[int],
        *,
        max_tokens: int,
        temperature: float,
        times: Any,
        constraint: Any,
    ) -> Iterator[int]:
        from foundry.local.engine import generate_tokens

        assert self._active is not None
        held, cache = self._active
        return generate_tokens(
            self._loaded,
            cache,
            new_tokens,
            max_tokens=max_tokens,
            temperature=temperature,
            times=times,
            fed=held.append,
            stop=self._prefill_stop,
            constraint=constraint,
            progress=self._prefilled,
        )

    def _detokenizer(self) -> Any:
        return self._loaded.tokenizer.detokenizer

    def _keep(self) -> None:
        if self._active is not None:
            self._pool.put(*self._active)  # (tokens, cache)
        self._active = None

    def _after_cancel(self) -> None:
        self._keep()  # the cache is consistent: keep it for the next one

    def _end_request(self) -> None:
        self._active = None  # pooled by _keep or _after_cancel, or (state unknown) dropped
