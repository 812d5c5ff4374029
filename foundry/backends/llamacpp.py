"""Local models with llama.cpp (llama-cpp-python): GGUF files run as they are, on llama.cpp's
CPU kernels (2.4-4.5x faster than MLX's on x86 Linux), with the mlx backend's guarantees.

Per request: keep the longest common token prefix of the conversation in the context's KV
cache; else restore the saved static prefix from the verified store (or compute and save
it); then prefill only the rest (always at least one token) and generate, with tool calls
under the request's grammar. The request itself (usage, context window, repair turn,
errors) is foundry.backends.local's, as for mlx.

What differs from mlx: a saved prefix is llama.cpp's sequence state, and one llama.cpp
context holds one conversation (its KV buffer is allocated whole when the model loads, so
there is no memory guard to run). For `foundry serve`, the conversation a request would cut
is parked first, as a copy of its state in an LRU bounded like mlx's in-memory caches, and
loaded back when its client returns.
"""

from __future__ import annotations

import importlib.util
import logging
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from foundry.backends.base import ModelRequest
from foundry.backends.local import LocalBackend
from foundry.config import FoundryConfig, LlamaCppConfig
from foundry.local.kv_pool import KVPool
from foundry.local.model_dirs import PULLABLE, Progress
from foundry.local.runtime import is_apple_silicon

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """This process's peak resident memory (llama.cpp allocates outside any Python API)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppBackend(LocalBackend):
    name: ClassVar[str] = "llamacpp"

    def __init__(
        self,
        config: FoundryConfig,
        model: str,
        *,
        base_url: str | None = None,
        reuse_conversation: bool = True,
    ) -> None:
        super().__init__(config, model, base_url=base_url, reuse_conversation=reuse_conversation)
        # Conversations set aside when another takes the context (`foundry serve` only): each
        # a copy of its sequence state, loaded back when its client returns.
        self._parked = KVPool(0, measure=len)
        self._prompt_length = 0  # the prompt of the request the context last ran
        self._gguf: Path | None = None  # found and checked by check(), loaded by _load()
        self._blocks = False  # the store keeps states as token blocks (kv_blocks)
        self._persist = False  # `foundry serve`: conversations saved after each request
        self._keeper: Any = None  # ConversationKeeper, when both hold
        self._deferred: tuple[int, ...] = ()  # cache points the keeper saves after the reply
        self.taken_back: dict[str, Any] = {}  # what a restart loaded back into memory

    def serve_with(
        self, *, l1_entries: int, memory_budget_bytes: int | None, output_cap: int | None = None
    ) -> None:
        super().serve_with(
            l1_entries=l1_entries, memory_budget_bytes=memory_budget_bytes, output_cap=output_cap
        )
        kept = l1_entries - 1 if self.reuse_conversation else 0  # the context holds one
        self._parked = KVPool(max(kept, 0), measure=len)
        self._persist = self.reuse_conversation
        self._start_keeping()

    def _start_keeping(self) -> None:
        """Served conversations go to disk where the store keeps blocks, and those it held
        come back into memory (serve_with may come before or after the model loads)."""
        from foundry.local.conversation_saver import ConversationKeeper
        from foundry.local.served_conversations import ServedConversations, take_back

        self._size_parking()
        if not (self._persist and self._blocks and self._keeper is None):
            return
        served = ServedConversations(
            self._store.store.dir, self._identity.digest, 1 + self._parked.max_entries
        )
        self._keeper = ConversationKeeper(lambda: self._store, self._identity, served)
        with self._keeper.lock:
            self.taken_back, self._prompt_length = take_back(
                served,
                store=self._store,
                identity=self._identity,
                engine=self._loaded,
                pool=self._parked,
            )

    def _size_parking(self) -> None:
        """The parked states get the memory budget less the context's own KV buffer, which
        llama.cpp allocated whole when the model loaded."""
        if self.memory_budget is None or self._loaded is None:
            return
        context = self._loaded.n_ctx * self._loaded.kv_bytes_per_token()
        self._parked.max_bytes = max(self.memory_budget - context, 0)

    @classmethod
    def engine_settings(cls, config: FoundryConfig) -> LlamaCppConfig:
        return config.llamacpp

    @classmethod
    def default_model(cls, config: FoundryConfig) -> str:
        return config.backend.llamacpp_model

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        """Where MLX is slow (not Apple silicon) and llama-cpp-python is installed."""
        return not is_apple_silicon() and llama_cpp_installed()

    @classmethod
    def runs_model(cls, model: str) -> bool:
        """A .gguf file, a name with one under models/, or a pullable model."""
        from foundry.local.llamacpp_models import find_gguf

        return model in PULLABLE or find_gguf(model) is not None

    def cache_state(self) -> dict[str, Any]:
        """The conversation in the context and the parked ones, for /cache/stats."""
        held = len(self._loaded.tokens) if self._loaded is not None else 0
        per_token = self._loaded.kv_bytes_per_token() if self._loaded is not None else None
        live_bytes = per_token * held if per_token else 0
        live = [{"tokens": held, "bytes": live_bytes, "live": True}] if held else []
        return {
            "entries": live + self._parked.describe(),
            "bytes": live_bytes + self._parked.nbytes,
            "max_entries": 1 + self._parked.max_entries,
            "evictions": self._parked.evictions,
            "kv_bytes_per_token": per_token,
            "memory_budget_bytes": self.memory_budget,
            "taken_back_at_start": self.taken_back,
            "engine_memory": {"peak_rss_bytes": int(peak_rss_mb() * 1024 * 1024)},
        }

    # -- setup -------------------------------------------------------------------------------

    def _import_engine(self) -> None:
        from foundry.local.llamacpp_engine import import_llama_cpp

        import_llama_cpp()

    def _find_model(self) -> None:
        from foundry.local.llamacpp_models import resolve_gguf

        self._gguf = resolve_gguf(self.model)

    def _fetch_model(self, progress: Progress) -> None:
        from foundry.local.pull import download_gguf

        download_gguf(self.model, progress=progress)

    def _load(self) -> None:
        from foundry.local.chat import ChatRenderer
        from foundry.local.engine import bounded_window
        from foundry.local.kv_blocks import BlockStore, probe_layout
        from foundry.local.llamacpp_chat import GgufChatTokenizer
        from foundry.local.llamacpp_engine import LlamaCppModel
        from foundry.local.llamacpp_models import resolve_gguf, state_identity
        from foundry.local.llamacpp_store import StateCodec

        settings = self.config.llamacpp
        # max_kv_size also sizes the KV buffer llama.cpp allocates (None: the file's length).
        self._loaded = LlamaCppModel(
            # Checked once: by check(), or here after a pull.
            self._gguf or resolve_gguf(self.model),
            self.model,
            n_ctx=settings.max_kv_size,
            kv_type=settings.kv_type,
            threads=settings.threads,
            flash_attn=settings.flash_attn,
        )
        override = self.config.models.get(self.model)
        window = bounded_window(
            self._loaded.n_ctx_train,
            override.context_window if override else None,
            settings.max_kv_size,
        )
        self._context_window = min(window or self._loaded.n_ctx, self._loaded.n_ctx)
        self._renderer = ChatRenderer(GgufChatTokenizer(self._loaded))
        self._identity = state_identity(self._loaded, self._open_store(StateCodec()))
        if self._store is not None and (layout := probe_layout(self._loaded)) is not None:
            self._store = BlockStore(self._store, layout)
            self._blocks = True
        self._start_keeping()

    def _grammar_tokenizer(self) -> Any:
        return self._loaded.grammar_tokenizer()

    def flush_saves(self, timeout: float) -> bool:
        return self._keeper is None or self._keeper.flush(timeout)

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
        self._parked.clear()
        if self._loaded is not None:
            self._loaded.close()
        super().close()

    def _peak_memory_mb(self) -> float:
        return peak_rss_mb()

    # -- the KV cache for one request --------------------------------------------------------

    def _restore(self, tokens: list[int], event: dict[str, Any]) -> str:
        """Load the saved state of exactly `tokens` into the context: "hit", or why not."""
        lookup = self._store.load(self._identity, tokens)
        if not lookup.hit:
            return lookup.reason
        started = time.perf_counter()
        if not self._loaded.load_state(lookup.cache, tokens):
            log.warning("llama.cpp refused a saved prefix that passed its checks; recomputing")
            return "llama.cpp refused the saved state"
        event["load_ms"] = lookup.load_ms + (time.perf_counter() - started) * 1000
        if lookup.prefill_ms is not None:
            self._prefix_cost = (len(tokens), lookup.prefill_ms)
        return "hit"

    def _park(self, engine: Any) -> None:
        """Set the context's conversation aside (a copy of its state) before it is cut; not
        when it cannot fit in what the memory budget leaves for parked states."""
        limit = self._parked.max_bytes
        if limit is not None and len(engine.tokens) * engine.kv_bytes_per_token() > limit:
            return
        started = time.perf_counter()
        tokens, state = list(engine.tokens), engine.save_state()
        self._parked.put(tokens, state, self._prompt_length)
        if self._keeper is not None:
            self._keeper.parked(tokens, state, self._prompt_length)
        log.debug(
            "parked a %d-token conversation in %.0f ms",
            len(engine.tokens),
            (time.perf_counter() - started) * 1000,
        )

    def _unpark(self, entry: Any, common: int, event: dict[str, Any]) -> bool:
        """Load a parked conversation (already out of the pool) into the context, cut back
        to the `common` tokens the prompt shares with it."""
        started = time.perf_counter()
        if not self._loaded.load_state(entry.cache, entry.tokens):
            log.warning("llama.cpp refused a parked conversation's state; reading the prefix")
            return False
        self._loaded.trim(common)
        event["load_ms"] = (time.perf_counter() - started) * 1000
        return True

    def _prepare_cache(
        self, rendered: Any, request: ModelRequest, max_tokens: int, use_store: bool
    ) -> tuple[int, dict[str, Any]]:
        """Leave a proper prefix of the prompt in the context: how many tokens it holds, and
        what it took. Every cache point of the prompt past what is reused is saved to the
        store on the way."""
        from foundry.local.chat import common_prefix_length
        from foundry.local.prefix_store import cache_key

        engine = self._loaded
        tokens = rendered.tokens
        self._deferred = ()
        store_on = use_store and self._store is not None
        with self._render_lock:
            points = self._renderer.cache_points(request, rendered) if store_on else []
        common = 0
        if self.reuse_conversation:
            common = min(common_prefix_length(engine.tokens, tokens), len(tokens) - 1)
        parked, parked_common = self._parked.best(tokens)
        if parked_common <= common:
            parked = None
        best = max(common, parked_common if parked else 0)
        disk = self._on_disk(tokens, points, best) if store_on else None
        if parked is not None and disk is None:
            if parked_common >= (parked.prompt_length or len(parked.tokens)):
                # Its client's next turn (the whole prompt kept, at most the reply differs):
                # out of the pool before the context's conversation is parked, so parking
                # never evicts it; the context holds what is reusable of it from here on.
                self._parked.take(parked, len(parked.tokens), copy_allowed=False)
            else:
                # Only its prefix is read (another client sharing its system prompt): its
                # state is loaded, not moved, so it stays parked whole for its own client.
                self._parked.lend(parked)
        # Park the conversation in the context when this request would cut into its prompt
        # (another client's, or an edited history). Not for a client's own next turn, which
        # keeps the whole previous prompt and diverges only inside the reply, nor for a
        # retry of that prompt (its last token is prefilled again for its logits, and the
        # new reply replaces the old): a copy of the state costs ~80 ms per 3k tokens.
        kept = min(self._prompt_length - 1, len(engine.tokens))
        if self._parked.max_entries and common < kept:
            self._park(engine)
        event: dict[str, Any] = {"reused": 0, "written": 0, "prefilled": 0, "prefill_s": 0.0}
        source, reason = "none", "prefix cache off or no prefix"
        if disk is not None:
            reason = self._restore(tokens[:disk], event)
            common = min(common, len(engine.tokens))  # a state llama.cpp refused emptied it
            if len(engine.tokens) == len(tokens):  # the whole prompt was on disk: the last
                engine.trim(len(tokens) - 1)  # token is prefilled again, for its logits
        if reason == "hit":
            source = "store"
        elif parked is not None and disk is None and self._unpark(parked, parked_common, event):
            source, reason = "memory", "in-memory reuse (a parked conversation)"
        elif common:
            engine.trim(common)
            source, reason = "memory", "in-memory reuse"
        else:
            engine.trim(0)
            if points and disk is None:  # a miss: the store says why (and logs it at -v)
                reason = self._store.load(self._identity, tokens[: points[0]]).reason
        reused = len(engine.tokens)
        # llama.cpp saves a whole sequence, so a point inside what is reused is not saved.
        ahead = [p for p in points if p > reused and not self._saved(tokens[:p])]
        self._plan(tokens, reused, ahead, source, reason)
        cost = self._cost_ms(reused)
        written_to = reused
        if self._keeper is not None and ahead:
            # `foundry serve`: the points are saved with the conversation after the reply, in
            # the background; a save here held the prefill up (~0.3 s per 3k tokens).
            self._deferred, written_to, ahead = tuple(ahead), ahead[-1], []
        for point in ahead:
            with self._store.lock(cache_key(self._identity, tokens[:point])):
                if self._saved(tokens[:point]):  # another process saved it meanwhile
                    if self._restore(tokens[:point], event) == "hit":
                        self._prefilled(point - written_to, computed=False)  # read, not computed
                        source, reused = "store", point
                        written_to = point
                        cost = self._prefix_cost[1] if self._prefix_cost else None
                        continue
                    if len(engine.tokens) < reused:  # a refused state emptied the context
                        reused = written_to = len(engine.tokens)
                        cost = self._cost_ms(reused)
                before = len(engine.tokens)
                started = time.perf_counter()
                engine.feed(tokens[before:point], stop=self._prefill_stop, progress=self._prefilled)
                took = time.perf_counter() - started
                event["prefill_s"] += took
                event["prefilled"] += point - before
                cost = cost + took * 1000 if cost is not None else None
                if cost is not None and before == 0:
                    self._prefix_cost = (point, cost)
                state = engine.save_state()
                if self._store.save(self._identity, tokens[:point], state, prefill_ms=cost):
                    written_to = point
        if source == "none" and (ahead or self._deferred):  # computed to be saved
            source = "computed"
        event.update(
            source=source,
            reason=reason,
            reused=reused,
            written=max(written_to - reused, 0),
            deferred=bool(self._deferred),
        )
        self._prompt_length = len(tokens)
        return len(engine.tokens), event

    def _on_disk(self, tokens: list[int], points: list[int], best: int) -> int | None:
        """The longest prefix of the prompt on disk that is longer than `best`: as blocks, any
        length (a breakpoint, or a conversation saved after its request); whole, a point."""
        if self._blocks:  # the whole prompt counts: a repeated request's tail is its end
            stored = int(self._store.stored_length(self._identity, tokens, len(tokens)))
            return stored if min(stored, len(tokens) - 1) > best else None
        return next((p for p in reversed(points) if p > best and self._saved(tokens[:p])), None)

    def _keep(self) -> None:
        """`foundry serve`: the conversation goes to disk in the background, so a restarted
        server finds it (only its blocks not stored yet are written)."""
        if self._keeper is not None:
            self._keeper.after_request(lambda: self._loaded, self._prompt_length, self._deferred)

    def _after_cancel(self) -> None:
        self._keep()  # what the prompt's prefill computed is worth a restart too

    def complete(self, request: ModelRequest, **options: Any) -> Any:
        if self._keeper is None:
            return super().complete(request, **options)
        with self._keeper.lock:  # a conversation is copied out only between requests
            return super().complete(request, **options)

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
        from foundry.local.llamacpp_engine import generate_tokens

        return generate_tokens(
            self._loaded,
            new_tokens,
            max_tokens=max_tokens,
            temperature=temperature,
            times=times,
            stop=self._prefill_stop,
            constraint=constraint,
            progress=self._prefilled,
        )

    def _detokenizer(self) -> Any:
        return self._loaded.detokenizer

    def _after_failure(self) -> None:
        self._loaded.trim(0)  # what the context holds is unknown: start the next one cold
