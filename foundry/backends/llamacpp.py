"""Local models with llama.cpp (llama-cpp-python): GGUF files run as they are, with the mlx
backend's guarantees, on llama.cpp's CPU kernels (2.4-5x faster than MLX's on x86 Linux).

Per request: keep the longest common token prefix of the conversation in the context's KV
cache; else restore the saved static prefix from the verified store (or compute and save
it); then prefill only the rest (always at least one token) and generate, with tool calls
under the request's grammar.

Usage has the mlx backend's meanings (cache_read = prefix tokens reused from the store or
memory, cache_write_5m = tokens newly saved, input = the other tokens prefilled now), and the
same context-window rules; most of the bookkeeping is MLXBackend's, inherited. What differs:
one llama.cpp context holds one conversation (its KV buffer is allocated whole when the model
loads, so there is no memory guard to run), and a saved prefix is llama.cpp's sequence state.
"""

from __future__ import annotations

import importlib.util
import logging
import resource
import sys
import threading
import time
from typing import Any, ClassVar

from foundry import console
from foundry.backends.base import (
    AttemptCallback,
    FailedAttempt,
    ModelRequest,
    ModelResponse,
    TextCallback,
)
from foundry.backends.mlx import CANCELLED, CONTEXT_TOO_LONG, MLXBackend, PlanCallback
from foundry.config import FoundryConfig
from foundry.errors import BackendError, FoundryError, LocalModelError, UsageError
from foundry.local.constrained import ToolGrammars
from foundry.local.model_dirs import PULLABLE
from foundry.local.runtime import is_apple_silicon
from foundry.local.stops import StopGate
from foundry.local.tool_calls import new_tool_use_id, repair_prompt
from foundry.timestamps import utc_now
from foundry.usage import Usage

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """This process's peak resident memory (llama.cpp allocates outside any Python API)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class LlamaCppBackend(MLXBackend):
    name: ClassVar[str] = "llamacpp"
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
            raise UsageError(
                "--base-url does not apply to the llamacpp backend: it runs the model in this "
                "process",
                "leave out --base-url, or use --backend openai to talk to a model server",
            )
        super().__init__(config, model, reuse_conversation=reuse_conversation)

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        """Where MLX is slow (not Apple silicon) and llama-cpp-python is installed."""
        return not is_apple_silicon() and importlib.util.find_spec("llama_cpp") is not None

    # -- setup -------------------------------------------------------------------------------

    def check(self) -> None:
        if self._checked:
            return
        from foundry.local.llamacpp_engine import import_llama_cpp
        from foundry.local.llamacpp_models import fetch_gguf, find_gguf, resolve_gguf

        import_llama_cpp()
        if find_gguf(self.model) is None and self.model in PULLABLE:
            console.info(f"local model '{self.model}' is not here yet; fetching it (first use)")
            try:
                fetch_gguf(self.model, progress=console.info)
            except FoundryError as exc:
                raise LocalModelError(
                    f"could not fetch the default local model '{self.model}': {exc.message}",
                    exc.hint or "set ANTHROPIC_API_KEY to use Claude instead",
                ) from None
        resolve_gguf(self.model)
        self._checked = True

    def _ensure_loaded(self) -> Any:
        if self._loaded is not None:
            return self._loaded
        from foundry.local.chat import ChatRenderer
        from foundry.local.llamacpp_chat import GgufChatTokenizer
        from foundry.local.llamacpp_engine import LlamaCppModel
        from foundry.local.llamacpp_models import resolve_gguf, state_identity
        from foundry.local.llamacpp_store import StateCodec
        from foundry.local.prefix_store import PrefixCacheStore

        self.check()
        # The mlx backend's rules: the length the file declares (a configured one only when
        # it declares none), never past max_kv_size, which also sizes the KV buffer.
        cap = self.config.mlx.max_kv_size
        self._loaded = LlamaCppModel(resolve_gguf(self.model), self.model, n_ctx=cap)
        override = self.config.models.get(self.model)
        window = self._loaded.n_ctx_train or (override.context_window if override else None)
        self._context_window = min(window or self._loaded.n_ctx, cap or self._loaded.n_ctx)
        self._renderer = ChatRenderer(GgufChatTokenizer(self._loaded))
        memo = None
        if self.config.prefix_cache.enabled:
            self._store = PrefixCacheStore.from_config(self.config, codec=StateCodec())
            memo = self._store.dir / "file-hashes.json"
        self._identity = state_identity(self._loaded, memo)
        self._grammars = ToolGrammars(
            self._loaded.grammar_tokenizer,
            self._renderer.call_format,
            enabled=self.config.mlx.constrained_tools,
        )
        return self._loaded

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded.close()
        self._rendered = None
        self._loaded = self._renderer = None

    def cache_state(self) -> dict[str, Any]:
        """The conversation in memory, for /cache/stats."""
        held = len(self._loaded.tokens) if self._loaded is not None else 0
        return {
            "entries": [{"tokens": held}] if held else [],
            "bytes": None,
            "max_entries": 1,
            "evictions": 0,
            "kv_bytes_per_token": self._loaded.kv_bytes_per_token() if held else None,
            "memory_budget_bytes": self.memory_budget,
        }

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

    def _prepare_cache(  # type: ignore[override]  # the context is the cache
        self, rendered: Any, request: ModelRequest, max_tokens: int, use_store: bool
    ) -> dict[str, Any]:
        """Leave a proper prefix of the prompt in the context, and say what it took. Every
        cache point of the prompt past what is reused is saved to the store on the way."""
        from foundry.local.chat import common_prefix_length
        from foundry.local.prefix_store import cache_key

        engine = self._loaded
        tokens = rendered.tokens
        store_on = use_store and self._store is not None
        with self._render_lock:
            points = self._renderer.cache_points(request, rendered) if store_on else []
        common = 0
        if self.reuse_conversation:
            common = min(common_prefix_length(engine.tokens, tokens), len(tokens) - 1)
        event: dict[str, Any] = {"reused": 0, "written": 0, "prefilled": 0, "prefill_s": 0.0}
        source, reason = "none", "prefix cache off or no prefix"
        disk = next((p for p in reversed(points) if p > common and self._saved(tokens[:p])), None)
        if disk is not None:
            reason = self._restore(tokens[:disk], event)
        if reason == "hit":
            source = "store"
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
        cost = self._cost_ms(reused)
        written_to = reused
        for point in ahead:
            with self._store.lock(cache_key(self._identity, tokens[:point])):
                if self._saved(tokens[:point]) and self._restore(tokens[:point], event) == "hit":
                    source, reused = "store", point  # another process saved it meanwhile
                    written_to, cost = point, self._prefix_cost[1] if self._prefix_cost else None
                    continue
                before = len(engine.tokens)
                started = time.perf_counter()
                engine.feed(tokens[before:point], stop=self._stop_requested)
                took = time.perf_counter() - started
                event["prefill_s"] += took
                event["prefilled"] += point - before
                cost = cost + took * 1000 if cost is not None else None
                if cost is not None and before == 0:
                    self._prefix_cost = (point, cost)
                state = engine.save_state()
                if self._store.save(self._identity, tokens[:point], state, prefill_ms=cost):
                    written_to = point
            if source == "none":
                source = "computed"
        event.update(
            source=source, reason=reason, reused=reused, written=max(written_to - reused, 0)
        )
        return event

    # -- one generation ----------------------------------------------------------------------

    def _generate(self, rendered: Any, request: ModelRequest, on_text: TextCallback | None):
        from foundry.local.engine import Cancelled, StepTimes
        from foundry.local.llamacpp_engine import generate_tokens

        engine = self._loaded
        started = time.perf_counter()
        max_tokens = min(request.max_tokens, self.config.mlx.max_tokens)
        room = self._room(len(rendered.tokens))
        if room is not None:  # never generate past the model's context window
            max_tokens = min(max_tokens, room)
        event = self._prepare_cache(rendered, request, max_tokens, request.ttl is not None)
        new_tokens = rendered.tokens[len(engine.tokens) :]
        times = StepTimes()
        detok = engine.detokenizer
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
                engine,
                new_tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                times=times,
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
        usage = self._usage(rendered, event, times, ttft, started, times.generated)
        if times.wound_up:
            self.last_cache_event["wound_up"] = True
            log.info("the reply was repeating itself in a tool call: the call was closed")
        if times.looped:
            self.last_cache_event["looped"] = True
            log.info("the reply was repeating itself: stopped after %d tokens", times.generated)
        if constraint is not None:
            self._note_constraint(constraint, times)
        self.last_stop_sequence = gate.hit
        hit_max = not times.ended_on_eos and gate.hit is None
        return gate.text, usage, hit_max

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
        cancel: threading.Event | None = None,
        on_plan: PlanCallback | None = None,
    ) -> ModelResponse:
        """One request, as MLXBackend.complete does it (a repair turn for a malformed call
        when unconstrained; "cancelled", "context_too_long" and "local_model_error" errors)."""
        from foundry.local.engine import Cancelled

        started_at = utc_now()
        self._ensure_loaded()
        self._cancel, self._on_plan, self._partial = cancel, on_plan, None
        self.last_stop_sequence = None

        def failed(error_class: str, message: str, usage: Usage | None = None) -> None:
            if on_failed_attempt:
                on_failed_attempt(
                    FailedAttempt(error_class, message, usage or Usage(), started_at=started_at)
                )

        try:
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
                if room is not None and room < 1:
                    break
                rendered = repair
            total.peak_memory_mb = peak_rss_mb()
        except Cancelled:  # the context still holds exactly what it says: nothing to undo
            failed(CANCELLED, "the request was cancelled", self._partial)
            raise BackendError(
                "the request was cancelled", "send it again", error_class=CANCELLED
            ) from None
        except FoundryError:
            raise
        except Exception as exc:  # a llama.cpp failure mid-request: start the next one cold
            self._loaded.trim(0)
            failed("local_model_error", str(exc))
            raise BackendError(
                f"local model '{self.model}' failed: {exc}",
                "retry; set FOUNDRY_DEBUG=1 for details",
                error_class="local_model_error",
            ) from exc
        finally:
            self._cancel = self._on_plan = None
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
        return ModelResponse(content, stop, total, self.model, None, started_at)
