"""Local models with mlx-lm: a saved, verified prefix KV cache plus in-memory multi-turn reuse.

Per request: reuse the conversation's in-memory KV cache up to the longest common token
prefix; else load the saved static prefix from the store (or compute and save it); then
prefill only the rest (always at least one token) and generate.

Usage follows Claude's meanings: cache_read_tokens = prefix tokens reused (saved or in
memory), cache_write_5m_tokens = tokens newly saved to the store, input_tokens = the other
tokens prefilled now; input + cache_read + cache_write = the prompt's length.

A request never runs past the model's context window: a prompt with no room left fails with
error_class "context_too_long" before any prefill, and the reply is capped to the room left.
"""

from __future__ import annotations

import logging
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
from foundry.config import FoundryConfig
from foundry.errors import BackendError, FoundryError, LocalModelError
from foundry.local.model_dirs import PULLABLE, resolve_model
from foundry.local.pull import pull
from foundry.local.tool_calls import new_tool_use_id, repair_prompt
from foundry.timestamps import utc_now
from foundry.usage import Usage

log = logging.getLogger(__name__)
MAX_REPAIRS = 1  # how often a malformed tool call is answered before the text goes back as is
RATE_SAMPLE_MIN_TOKENS = 64  # prefill rates from fewer tokens are dominated by overhead
CONTEXT_TOO_LONG = "context_too_long"  # the error class the Claude backend uses too


class MLXBackend:
    name: ClassVar[str] = "mlx"
    local: ClassVar[bool] = True

    def __init__(
        self, config: FoundryConfig, model: str, *, reuse_conversation: bool = True
    ) -> None:
        self.config = config
        self.model = model
        self.reuse_conversation = reuse_conversation
        self.max_tokens = config.mlx.max_tokens
        self._loaded: Any = None
        self._renderer: Any = None
        self._identity: Any = None
        self._store: Any = None
        self._cache: list[Any] | None = None  # the conversation's KV cache...
        self._cache_tokens: list[int] = []  # ...and exactly the tokens it holds
        self._prefill_rate: float | None = None
        # (tokens, ms) of the static prefix as measured when it was computed: what reuse saves.
        self._prefix_cost: tuple[int, float] | None = None
        self._context_window: int | None = None  # known once the model is loaded
        self.last_cache_event: dict[str, Any] = {}  # what the last request did, for reports
        self._checked = False  # check() passed; the build command and _ensure_loaded both call it

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
        return self._loaded

    def close(self) -> None:
        self._cache = None
        self._cache_tokens = []
        self._loaded = self._renderer = None

    # -- the KV cache for one request --------------------------------------------------------

    def _reuse_in_memory(self, tokens: list[int], prefix: list[int]) -> int | None:
        """Trim the conversation cache back to its common prefix with `tokens`, if worth it."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        from foundry.local.chat import common_prefix_length

        if self._cache is None or not self.reuse_conversation:
            return None
        common = min(common_prefix_length(self._cache_tokens, tokens), len(tokens) - 1)
        excess = len(self._cache_tokens) - common
        if common < max(len(prefix), 1) or (excess and not can_trim_prompt_cache(self._cache)):
            return None
        if excess and trim_prompt_cache(self._cache, excess) != excess:
            return None
        del self._cache_tokens[common:]
        return common

    def _prepare_cache(self, tokens: list[int], prefix: list[int], use_store: bool) -> dict:
        """Leave self._cache holding a proper prefix of `tokens`; report what it took."""
        from foundry.local.engine import prefill

        event: dict[str, Any] = {"reused": 0, "written": 0, "prefilled": 0, "prefill_s": 0.0}
        reused = self._reuse_in_memory(tokens, prefix)
        if reused is not None:
            return {**event, "source": "memory", "reused": reused, "reason": "in-memory reuse"}
        self._cache, self._cache_tokens = None, []
        if not (use_store and self._store is not None and prefix):
            self._cache = self._loaded.make_cache()
            return {**event, "source": "none", "reason": "prefix cache off or no prefix"}
        lookup = self._store.load(self._identity, prefix)
        if not lookup.hit:
            with self._store.lock(lookup.key):  # another build may be computing this prefix
                lookup = self._store.load(self._identity, prefix)
                if not lookup.hit:
                    cache = self._loaded.make_cache()
                    started = time.perf_counter()
                    prefill(self._loaded.model, cache, prefix)
                    event["prefill_s"] = time.perf_counter() - started
                    event["prefilled"] = len(prefix)
                    self._prefix_cost = (len(prefix), event["prefill_s"] * 1000)
                    written = self._store.save(
                        self._identity, prefix, cache, prefill_ms=self._prefix_cost[1]
                    )
                    event["written"] = len(prefix) if written else 0
                    self._cache, self._cache_tokens = cache, list(prefix)
                    return {**event, "source": "computed", "reason": lookup.reason}
        self._cache, self._cache_tokens = lookup.cache, list(prefix)
        if lookup.prefill_ms is not None:
            self._prefix_cost = (len(prefix), lookup.prefill_ms)
        return {
            **event,
            "source": "store",
            "reused": len(prefix),
            "reason": "hit",
            "load_ms": lookup.load_ms,
        }

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
        from foundry.local.engine import StepTimes, generate_tokens

        use_store = request.ttl is not None
        started = time.perf_counter()
        event = self._prepare_cache(rendered.tokens, rendered.prefix, use_store)
        assert self._cache is not None  # _prepare_cache always leaves one
        new_tokens = rendered.tokens[len(self._cache_tokens) :]
        times = StepTimes()
        detok = self._loaded.tokenizer.detokenizer
        detok.reset()
        max_tokens = min(request.max_tokens, self.config.mlx.max_tokens)
        room = self._room(len(rendered.tokens))
        if room is not None:  # never generate past the model's context window
            max_tokens = min(max_tokens, room)
        temperature = (
            request.temperature if request.temperature is not None else self.config.mlx.temperature
        )
        ttft = None
        for token in generate_tokens(
            self._loaded,
            self._cache,
            new_tokens,
            max_tokens=max_tokens,
            temperature=temperature,
            times=times,
            fed=self._cache_tokens.append,
        ):
            if ttft is None:
                ttft = time.perf_counter() - started
            detok.add_token(token)
            if on_text and detok.last_segment:
                on_text(detok.last_segment)
        detok.finalize()
        if on_text and detok.last_segment:
            on_text(detok.last_segment)
        if ttft is None:
            ttft = time.perf_counter() - started
        prefilled = event["prefilled"] + len(new_tokens)
        prefill_s = event["prefill_s"] + times.prefill_s
        rate = prefilled / prefill_s if prefill_s > 0 else None
        if rate and prefilled >= RATE_SAMPLE_MIN_TOKENS:
            self._prefill_rate = max(rate, self._prefill_rate or 0.0)
        best_rate = self._prefill_rate or rate
        usage = Usage(
            input_tokens=len(rendered.tokens) - event["reused"] - event["written"],
            output_tokens=times.generated,
            cache_read_tokens=event["reused"],
            cache_write_5m_tokens=event["written"],
            ttft_ms=ttft * 1000,
            duration_ms=(time.perf_counter() - started) * 1000,
            prefill_tokens_per_s=rate,
            generation_tokens_per_s=(
                times.generated / times.generate_s if times.generate_s > 0 else None
            ),
            prefill_saved_ms=self._saved_ms(event, best_rate),
        )
        hit_max = not times.ended_on_eos
        self.last_cache_event = {**event, "new_tokens": len(new_tokens), "max_tokens": max_tokens}
        return detok.text, usage, hit_max

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
    ) -> ModelResponse:
        from foundry.local.runtime import peak_memory_mb, reset_peak_memory

        started_at = utc_now()
        loaded = self._ensure_loaded()
        try:
            reset_peak_memory()
            rendered = self._renderer.render(request)
            room = self._room(len(rendered.tokens))
            if room is not None and room < 1:  # checked before any prefill
                error = self._too_long(len(rendered.tokens))
                if on_failed_attempt:
                    on_failed_attempt(
                        FailedAttempt(CONTEXT_TOO_LONG, error.message, started_at=started_at)
                    )
                raise error
            total = Usage()
            for attempt in range(MAX_REPAIRS + 1):
                text, usage, hit_max = self._generate(rendered, request, on_text)
                total += usage
                reply = self._renderer.parse(text, request)
                if reply.calls or not reply.errors or attempt == MAX_REPAIRS:
                    break
                # Answer the malformed call with what was wrong, and let the model try again.
                log.info("malformed tool call(s): %s", "; ".join(reply.errors))
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
        except FoundryError:
            raise
        except Exception as exc:  # an mlx failure mid-request: the cache state is unknown
            self._cache, self._cache_tokens = None, []
            failure = FailedAttempt("local_model_error", str(exc), started_at=started_at)
            if on_failed_attempt:
                on_failed_attempt(failure)
            raise BackendError(
                f"local model '{self.model}' failed: {exc}",
                "retry; set FOUNDRY_DEBUG=1 for details",
                error_class="local_model_error",
            ) from exc
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [
            {"type": "tool_use", "id": new_tool_use_id(), "name": c["name"], "input": c["input"]}
            for c in reply.calls
        ]
        stop = "tool_use" if reply.calls else ("max_tokens" if hit_max else "end_turn")
        return ModelResponse(content, stop, total, loaded.name, None, started_at)
