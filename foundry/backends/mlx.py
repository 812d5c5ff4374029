"""Local models with mlx-lm: a saved, verified prefix KV cache plus in-memory multi-turn reuse.

Per request: reuse the conversation's in-memory KV cache up to the longest common token
prefix; else load the saved static prefix from the store (or compute and save it); then
prefill only the rest (always at least one token) and generate.

Usage follows Claude's meanings: cache_read_tokens = prefix tokens reused (saved or in
memory), cache_write_5m_tokens = tokens newly saved to the store, input_tokens = the other
tokens prefilled now; input + cache_read + cache_write = the prompt's length.

A request never runs past the model's context window: a prompt with no room left fails with
error_class "context_too_long" before any prefill, and the reply is capped to the room left.

In memory the backend keeps an LRU of KV caches (foundry.local.kv_pool): one conversation for
a build; several, across clients, for `foundry serve`, which also sets a memory budget (a
request whose KV cache cannot fit fails with error_class "overloaded" before any prefill) and
may cancel a request between two decode steps (error_class "cancelled").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from foundry import console
from foundry.backends.base import (
    AttemptCallback,
    FailedAttempt,
    ModelRequest,
    ModelResponse,
    TextCallback,
)
from foundry.config import FoundryConfig
from foundry.errors import BackendError, FoundryError, LocalModelError
from foundry.local.constrained import ToolGrammars, hf_grammar_tokenizer
from foundry.local.kv_memory import OVERLOADED, KVMemory
from foundry.local.kv_pool import KVPool, copy_prefix
from foundry.local.model_dirs import PULLABLE, resolve_model
from foundry.local.pull import pull
from foundry.local.stops import StopGate
from foundry.local.tool_calls import new_tool_use_id, repair_prompt
from foundry.timestamps import utc_now
from foundry.usage import Usage

log = logging.getLogger(__name__)
MAX_REPAIRS = 1  # how often a malformed tool call is answered before the text goes back as is
RATE_SAMPLE_MIN_TOKENS = 64  # prefill rates from fewer tokens are dominated by overhead
CONTEXT_TOO_LONG = "context_too_long"  # the error class the Claude backend uses too
CANCELLED = "cancelled"  # the caller cancelled the request (a client disconnected)
PlanCallback = Callable[[dict[str, Any]], None]


class MLXBackend:
    name: ClassVar[str] = "mlx"
    local: ClassVar[bool] = True

    def __init__(
        self,
        config: FoundryConfig,
        model: str,
        *,
        base_url: str | None = None,
        reuse_conversation: bool = True,
    ) -> None:
        if base_url is not None:
            from foundry.errors import UsageError

            raise UsageError(
                "--base-url does not apply to the mlx backend: it runs the model in this process",
                "leave out --base-url, or use --backend openai to talk to a model server",
            )
        self.config = config
        self.model = model
        self.reuse_conversation = reuse_conversation
        self.max_tokens = config.mlx.max_tokens
        self._loaded: Any = None
        self._renderer: Any = None
        self._identity: Any = None
        self._store: Any = None
        # The in-memory KV caches (L1): a build keeps its one conversation.
        self._pool = KVPool(1 if reuse_conversation else 0)
        self.memory_budget: int | None = None  # bytes of KV cache allowed; None: no guard
        self.max_repairs = MAX_REPAIRS
        self._memory: Any = None  # KVMemory, once the model is loaded
        # Set for the running request only: its cancel flag, plan listener, cache in use
        # (handed back to the pool when cancelled) and usage so far.
        self._cancel: threading.Event | None = None
        self._on_plan: PlanCallback | None = None
        self._active: tuple[list[Any], list[int]] | None = None
        self._partial: Usage | None = None
        self._rendered: tuple[ModelRequest, Any] | None = None  # the last prompt counted
        # The tokenizer is not safe to share between threads: a server counts prompts on its
        # request threads while its worker runs the model.
        self._render_lock = threading.RLock()
        self.last_stop_sequence: str | None = None
        self._prefill_rate: float | None = None
        # (tokens, ms) of the static prefix as measured when it was computed: what reuse saves.
        self._prefix_cost: tuple[int, float] | None = None
        self._context_window: int | None = None  # known once the model is loaded
        self._grammars: Any = None  # ToolGrammars, once the model is loaded
        self.last_cache_event: dict[str, Any] = {}  # what the last request did, for reports
        self._checked = False  # check() passed; the build command and _ensure_loaded both call it

    def serve_with(self, *, l1_entries: int, memory_budget_bytes: int | None) -> None:
        """Settings for `foundry serve`: several conversations in memory, a KV memory budget,
        and no repair turn (a streamed reply cannot take back text it has sent)."""
        self._pool = KVPool(l1_entries if self.reuse_conversation else 0)
        self.memory_budget = memory_budget_bytes
        self.max_repairs = 0

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

    # -- capabilities ------------------------------------------------------------------------

    @classmethod
    def default_model(cls, config: FoundryConfig) -> str:
        return config.backend.mlx_model

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        return True  # the embedded default: no key, no server, pulled on first use

    @property
    def context_window(self) -> int | None:
        return self._context_window

    @property
    def endpoint(self) -> str | None:
        return None

    def keepalive_request(self, last: ModelRequest) -> ModelRequest | None:
        return None  # the saved prefix and the in-memory cache never expire

    def count_tokens(self, system: str) -> int:
        """Exact for this model: `system` through its own tokenizer (without chat framing)."""
        self._ensure_loaded()
        return len(self._renderer.encode(system))

    def count_request_tokens(self, request: ModelRequest) -> int:
        """Exact prompt tokens of a whole request, rendered with the chat template (the
        rendering is kept, so completing this same request does not render it again)."""
        self._ensure_loaded()
        with self._render_lock:
            rendered = self._renderer.render(request)
        self._rendered = (request, rendered)
        return len(rendered.tokens)

    @property
    def tool_call_tag(self) -> str:
        """What opens a tool call in this model's replies (for streaming without it)."""
        self._ensure_loaded()
        return str(self._renderer.tool_call_tag)

    def cache_state(self) -> dict[str, Any]:
        """The in-memory caches and the memory guard's figures, for /cache/stats."""
        return {
            "entries": self._pool.describe(),
            "bytes": self._pool.nbytes,
            "max_entries": self._pool.max_entries,
            "evictions": self._pool.evictions,
            "kv_bytes_per_token": self._memory.token_bytes if self._memory else None,
            "memory_budget_bytes": self.memory_budget,
        }

    # -- setup -------------------------------------------------------------------------------

    def check(self) -> None:
        if self._checked:
            return
        from foundry.local.runtime import import_mlx_lm

        import_mlx_lm()
        try:
            resolve_model(self.model)
        except LocalModelError:
            if self.model not in PULLABLE:
                raise
            console.info(f"local model '{self.model}' is not here yet; pulling it (first use)")
            try:
                pull(self.model, progress=console.info)
            except FoundryError as exc:
                raise LocalModelError(
                    f"could not pull the default local model '{self.model}': {exc.message}",
                    exc.hint or "set ANTHROPIC_API_KEY to use Claude instead",
                ) from None
        self._checked = True

    def load(self) -> None:
        """Load the model now (a server loads it before it takes requests)."""
        self._ensure_loaded()

    def _ensure_loaded(self) -> Any:
        if self._loaded is not None:
            return self._loaded
        from foundry.local.chat import ChatRenderer
        from foundry.local.engine import context_window, load_model, model_identity
        from foundry.local.prefix_store import PrefixCacheStore

        self.check()
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
        memo = None
        if self.config.prefix_cache.enabled:
            self._store = PrefixCacheStore.from_config(self.config)
            memo = self._store.dir / "file-hashes.json"
        self._identity = model_identity(self._loaded, memo)
        self._memory = KVMemory(self._loaded, mlx.max_kv_size)
        self._grammars = ToolGrammars(
            self._grammar_tokenizer, self._renderer.call_format, enabled=mlx.constrained_tools
        )
        return self._loaded

    def _grammar_tokenizer(self) -> Any:
        loaded = self._loaded
        eos = sorted(loaded.tokenizer.eos_token_ids)
        return hf_grammar_tokenizer(loaded.tokenizer._tokenizer, loaded.vocab_size, eos)

    def close(self) -> None:
        self._pool.clear()
        self._rendered = None
        self._loaded = self._renderer = None

    # -- the KV cache for one request --------------------------------------------------------

    def _stop_requested(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def _cost_ms(self, tokens: int) -> float | None:
        """What computing the first `tokens` of a prompt costs, from the measured prefix."""
        if not tokens:
            return 0.0
        if self._prefix_cost is not None:
            length, ms = self._prefix_cost
            return ms * tokens / length
        return tokens / self._prefill_rate * 1000 if self._prefill_rate else None

    def _saved(self, tokens: list[int]) -> bool:
        return bool(self._store.has(self._identity, tokens))

    def _prepare_cache(
        self, rendered: Any, request: ModelRequest, max_tokens: int, use_store: bool
    ) -> tuple[list[Any], list[int], dict[str, Any]]:
        """A KV cache holding a proper prefix of the prompt, exactly the tokens it holds, and
        what it took. On the way, every cache point of the prompt (the system turn, and each
        client cache breakpoint) is saved to the store unless it is there already."""
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
        self._active = (cache, held)  # what a cancelled request hands back to the pool
        reused = len(held)
        todo = [p for p in points if not self._saved(tokens[:p])]
        ahead = [p for p in todo if p > reused]
        if self._on_plan is not None:
            self._on_plan(
                {
                    "prompt_tokens": len(tokens),
                    "cache_read": reused,
                    "cache_write": ahead[-1] - reused if ahead else 0,
                    "source": source,
                    "reason": reason,
                }
            )
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
                        self._active = (cache, held)
                        reused = written_to = point
                        cost = lookup.prefill_ms
                        continue
                before = len(held)
                started = time.perf_counter()
                prefill(
                    self._loaded.model,
                    cache,
                    tokens[before:point],
                    stop=self._stop_requested,
                    fed=held.extend,
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
        return cache, held, event

    # -- the context window ------------------------------------------------------------------

    def _room(self, prompt_tokens: int) -> int | None:
        """Tokens left for the reply after the prompt; None when the window is unknown."""
        if self._context_window is None:
            return None
        return self._context_window - prompt_tokens

    def _too_long(self, prompt_tokens: int) -> BackendError:
        return BackendError(
            f"the prompt is {prompt_tokens:,} tokens, which leaves no room for a reply in local "
            f"model '{self.model}''s context window of {self._context_window:,} tokens",
            "start a fresh conversation (fewer turns per phase with --max-turns), shorten the "
            "orchestrator prompt, or use a model with a longer context",
            error_class=CONTEXT_TOO_LONG,
        )

    # -- one generation ----------------------------------------------------------------------

    def _generate(self, rendered: Any, request: ModelRequest, on_text: TextCallback | None):
        from foundry.local.engine import Cancelled, StepTimes, generate_tokens

        use_store = request.ttl is not None
        started = time.perf_counter()
        max_tokens = min(request.max_tokens, self.config.mlx.max_tokens)
        room = self._room(len(rendered.tokens))
        if room is not None:  # never generate past the model's context window
            max_tokens = min(max_tokens, room)
        cache, held, event = self._prepare_cache(rendered, request, max_tokens, use_store)
        new_tokens = rendered.tokens[len(held) :]
        times = StepTimes()
        detok = self._loaded.tokenizer.detokenizer
        detok.reset()
        temperature = (
            request.temperature if request.temperature is not None else self.config.mlx.temperature
        )
        gate = StopGate(getattr(request, "stop_sequences", ()))
        constraint = self._grammars.for_request(request)
        ttft = None
        event["new_tokens"] = len(new_tokens)
        self.last_cache_event = {**event, "max_tokens": max_tokens}
        generated = 0
        try:
            for token in generate_tokens(
                self._loaded,
                cache,
                new_tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                times=times,
                fed=held.append,
                stop=self._stop_requested,
                constraint=constraint,
            ):
                if ttft is None:
                    ttft = time.perf_counter() - started
                if self._stop_requested():  # checked after every decode step
                    raise Cancelled()
                generated += 1
                detok.add_token(token)
                out = gate.feed(detok.last_segment)
                if on_text and out:
                    on_text(out)
                if gate.hit is not None:
                    break
            else:
                detok.finalize()
                out = gate.feed(detok.last_segment) + gate.flush()
                if on_text and out:
                    on_text(out)
        except Cancelled:
            self._partial = self._usage(rendered, event, times, ttft, started, generated)
            raise
        if ttft is None:
            ttft = time.perf_counter() - started
        self._pool.put(held, cache)
        self._active = None
        usage = self._usage(rendered, event, times, ttft, started, times.generated)
        if times.wound_up:
            self.last_cache_event["wound_up"] = True
            log.info("the reply was repeating itself: it was steered to its end")
        if times.looped:
            self.last_cache_event["looped"] = True
            log.info("the reply was repeating itself: stopped after %d tokens", times.generated)
        if constraint is not None:
            self._note_constraint(constraint, times)
        self.last_stop_sequence = gate.hit
        hit_max = not times.ended_on_eos and gate.hit is None
        return gate.text, usage, hit_max

    def _note_constraint(self, constraint: Any, times: Any) -> None:
        """What the grammar cost this reply, for reports and benchmarks."""
        cost = constraint.cost
        per_token = cost.ms_per_token
        decode_ms = times.generate_s * 1000 / times.forward_passes if times.forward_passes else None
        self.last_cache_event.update(
            constrained=not constraint.failed,
            mask_ms_per_token=per_token,
            decode_ms_per_step=decode_ms,
            forced_tokens=cost.forced,
        )
        log.info(
            "constrained reply: %d tokens, %d forced by the grammar, mask %.3f ms per token",
            times.generated,
            cost.forced,
            per_token or 0.0,
        )

    def _usage(
        self,
        rendered: Any,
        event: dict[str, Any],
        times: Any,
        ttft: float | None,
        started: float,
        generated: int,
    ) -> Usage:
        prefilled = event["prefilled"] + event["new_tokens"]
        prefill_s = event["prefill_s"] + times.prefill_s
        rate = prefilled / prefill_s if prefill_s > 0 else None
        if rate and prefilled >= RATE_SAMPLE_MIN_TOKENS:
            self._prefill_rate = max(rate, self._prefill_rate or 0.0)
        best_rate = self._prefill_rate or rate
        return Usage(
            input_tokens=len(rendered.tokens) - event["reused"] - event["written"],
            output_tokens=generated,
            cache_read_tokens=event["reused"],
            cache_write_5m_tokens=event["written"],
            ttft_ms=ttft * 1000 if ttft is not None else None,
            duration_ms=(time.perf_counter() - started) * 1000,
            prefill_tokens_per_s=rate,
            generation_tokens_per_s=(
                times.generated / times.generate_s if times.generate_s > 0 else None
            ),
            prefill_saved_ms=self._saved_ms(event, best_rate),
        )

    def _saved_ms(self, event: dict[str, Any], fallback_rate: float | None) -> float | None:
        """Prefill time the reused tokens saved, net of loading them. Scaled from the measured
        cost of the prefix: conservative, as later tokens cost more (they attend to more).
        Dividing by this request's own rate instead overstated it up to 2x, since a few
        tokens appended to a long prefix prefill far slower than the prefix's average."""
        reused = event["reused"]
        if not reused:
            return 0.0
        if self._prefix_cost is not None:
            tokens, ms = self._prefix_cost
            return max(ms * reused / tokens - event.get("load_ms", 0.0), 0.0)
        return reused / fallback_rate * 1000 if fallback_rate else None

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
        cancel: threading.Event | None = None,
        on_plan: PlanCallback | None = None,
    ) -> ModelResponse:
        """One request. `cancel`, when set, stops it between two decode steps (or prefill
        chunks) with error_class "cancelled"; `on_plan` hears, before any prefill, how many
        prompt tokens will be read from a cache and written to the store."""
        from foundry.local.engine import Cancelled
        from foundry.local.runtime import peak_memory_mb, reset_peak_memory

        started_at = utc_now()
        loaded = self._ensure_loaded()
        self._cancel, self._on_plan, self._active, self._partial = cancel, on_plan, None, None
        self.last_stop_sequence = None

        def failed(error_class: str, message: str, usage: Usage | None = None) -> None:
            if on_failed_attempt:
                on_failed_attempt(
                    FailedAttempt(error_class, message, usage or Usage(), started_at=started_at)
                )

        try:
            reset_peak_memory()
            memo = self._rendered
            if memo is not None and memo[0] is request:
                rendered = memo[1]
            else:
                with self._render_lock:
                    rendered = self._renderer.render(request)
            self._rendered = None
            room = self._room(len(rendered.tokens))
            if room is not None and room < 1:  # checked before any prefill
                error = self._too_long(len(rendered.tokens))
                failed(CONTEXT_TOO_LONG, error.message)
                raise error
            total = Usage()
            for attempt in range(self.max_repairs + 1):
                text, usage, hit_max = self._generate(rendered, request, on_text)
                self._on_plan = None  # a repair turn is part of the same reply
                total += usage
                reply = self._renderer.parse(text, request)
                if reply.calls or not reply.errors or attempt == self.max_repairs:
                    break
                if self.last_cache_event.get("constrained"):
                    break  # a constrained call is valid; only max_tokens can cut one short
                # Answer the malformed call with what was wrong, and let the model try again.
                log.info("malformed tool call(s): %s", "; ".join(reply.errors))
                with self._render_lock:
                    repair = self._renderer.render(
                        request,
                        extra_chat=[
                            {"role": "assistant", "content": text},
                            {"role": "user", "content": repair_prompt(reply.errors)},
                        ],
                    )
                room = self._room(len(repair.tokens))
                if room is not None and room < 1:  # no room to repair: return the text as is
                    break
                rendered = repair
            total.peak_memory_mb = peak_memory_mb()
        except Cancelled:
            if self._active is not None:  # the cache is consistent: keep it for the next one
                self._pool.put(*self._active)
            failed(CANCELLED, "the request was cancelled", self._partial)
            raise BackendError(
                "the request was cancelled", "send it again", error_class=CANCELLED
            ) from None
        except BackendError as exc:
            if exc.error_class == OVERLOADED:
                failed(OVERLOADED, exc.message)
            raise
        except FoundryError:
            raise
        except Exception as exc:  # an mlx failure mid-request: the cache state is unknown
            failed("local_model_error", str(exc))
            raise BackendError(
                f"local model '{self.model}' failed: {exc}",
                "retry; set FOUNDRY_DEBUG=1 for details",
                error_class="local_model_error",
            ) from exc
        finally:
            self._cancel = self._on_plan = self._active = None
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [
            {"type": "tool_use", "id": new_tool_use_id(), "name": c["name"], "input": c["input"]}
            for c in reply.calls
        ]
        if reply.calls and not (hit_max and reply.errors):
            stop = "tool_use"  # (a call the output limit cut short makes it max_tokens)
        elif self.last_stop_sequence is not None:
            stop = "stop_sequence"
        else:
            stop = "max_tokens" if hit_max else "end_turn"
        return ModelResponse(content, stop, total, loaded.name, None, started_at)
