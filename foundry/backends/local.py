"""What the in-process local engines share: one request from prompt to reply, with the usage
meanings, the context-window rules, the repair turn and the error classes they all keep
(one generation itself, from the prepared cache to the usage: foundry.backends.
local_generation).

An engine's backend (mlx, llamacpp) supplies how a model is found and loaded, how a KV cache
holding a proper prefix of the prompt is made ready (from memory, the prefix store, or
computed and saved on the way) and how tokens are generated after it.

Usage follows Claude's meanings: cache_read_tokens = prefix tokens reused (saved or in
memory), cache_write_5m_tokens = tokens newly saved to the store, input_tokens = the other
tokens prefilled now; input + cache_read + cache_write = the prompt's length.

A request never runs past the model's context window: a prompt with no room left fails with
error_class "context_too_long" before any prefill, and the reply is capped to the room left.
`cancel` stops a request between two decode steps (or prefill chunks) with error_class
"cancelled".
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

from foundry import console
from foundry.backends.base import (
    AttemptCallback,
    FailedAttempt,
    ModelRequest,
    ModelResponse,
    PrefillCallback,
    TextCallback,
)
from foundry.backends.local_generation import (
    CANCELLED,
    CONTEXT_TOO_LONG,
    STOP_REASONS,
    LocalGeneration,
    PlanCallback,
)
from foundry.backends.prefill import PrefillMeter
from foundry.config import FoundryConfig, LocalEngineConfig
from foundry.errors import BackendError, FoundryError, LocalModelError, UsageError
from foundry.local.kv_memory import OVERLOADED
from foundry.local.model_dirs import PULLABLE, Progress
from foundry.local.tool_calls import new_tool_use_id, repair_prompt
from foundry.timestamps import utc_now
from foundry.usage import Usage

log = logging.getLogger(__name__)
MAX_REPAIRS = 1  # how often a malformed tool call is answered before the text goes back as is


class LocalBackend(LocalGeneration):
    """A model run in this process by an engine; subclasses fill in the engine's part."""

    name: ClassVar[str]
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
                f"--base-url does not apply to the {self.name} backend: it runs the model in "
                "this process",
                "leave out --base-url, or use --backend openai to talk to a model server",
            )
        self.config = config
        self.model = model
        self.reuse_conversation = reuse_conversation
        self.settings: LocalEngineConfig = self.engine_settings(config)
        self.max_tokens = self.settings.max_tokens
        # The operator's cap on a reply: a build's engine max_tokens; serve's --max-output-tokens
        # or none. The client's max_tokens and the context window bound a reply besides.
        self.output_cap: int | None = self.settings.max_tokens
        self._loaded: Any = None
        self._renderer: Any = None
        self._identity: Any = None
        self._store: Any = None
        self.memory_budget: int | None = None  # bytes of KV cache allowed; None: no guard
        self.max_repairs = MAX_REPAIRS
        # Set for the running request only: its cancel flag, plan listener and usage so far.
        self._cancel: threading.Event | None = None
        self._prefill_cancel: threading.Event | None = None
        self._on_plan: PlanCallback | None = None
        self._partial: Usage | None = None
        self._computed = 0
        self._on_prefill: PrefillCallback | None = None  # the running request's listener
        self._meter: PrefillMeter | None = None  # its prefill, counted (foundry.backends.prefill)
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

    # -- what an engine supplies -------------------------------------------------------------

    @classmethod
    def engine_settings(cls, config: FoundryConfig) -> LocalEngineConfig:
        """The config section of this engine (max_tokens, temperature, ...)."""
        raise NotImplementedError

    def _import_engine(self) -> None:
        """Import the engine's library, or raise a LocalModelError saying how to install it."""
        raise NotImplementedError

    def _find_model(self) -> None:
        """A LocalModelError, saying how to get it, unless the model's files are here."""
        raise NotImplementedError

    def _fetch_model(self, progress: Progress) -> None:
        """Fetch a pullable model's files (first use)."""
        raise NotImplementedError

    def _load(self) -> None:
        """Load the model: set _loaded, _renderer, _context_window, and (_open_store) _store
        and _identity."""
        raise NotImplementedError

    def _grammar_tokenizer(self) -> Any:
        """llguidance's view of the model's vocabulary (built on first constrained use)."""
        raise NotImplementedError

    def _after_cancel(self) -> None:
        """A request was cancelled between two steps: its KV cache is consistent."""

    def _after_failure(self) -> None:
        """An engine failure mid-request: the KV cache's state is unknown."""

    def _end_request(self) -> None:
        """The request is over, however it ended: drop what only it used."""

    def _reset_peak_memory(self) -> None:
        pass

    def _peak_memory_mb(self) -> float | None:
        return None

    def _reply_model(self) -> str:
        return self.model

    # -- capabilities ------------------------------------------------------------------------

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        return True

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

    def serve_with(
        self, *, l1_entries: int, memory_budget_bytes: int | None, output_cap: int | None = None
    ) -> None:
        """Settings for `foundry serve`: conversations kept in memory, a KV memory budget, no
        repair turn (a streamed reply cannot take back text it has sent), and the operator's
        cap on a reply (None: a reply may run to the client's max_tokens or the window)."""
        self.memory_budget = memory_budget_bytes
        self.max_repairs = 0
        self.output_cap = output_cap
        self.max_tokens = output_cap if output_cap is not None else sys.maxsize

    # -- setup -------------------------------------------------------------------------------

    def check(self) -> None:
        """The engine is installed and the model is here: a pullable one is fetched now."""
        if self._checked:
            return
        self._import_engine()
        try:
            self._find_model()
        except LocalModelError:
            if self.model not in PULLABLE:
                raise
            console.info(f"local model '{self.model}' is not here yet; pulling it (first use)")
            try:
                self._fetch_model(console.info)
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
        if self._loaded is None:
            from foundry.local.constrained import ToolGrammars

            self.check()
            self._load()
            self._grammars = ToolGrammars(
                self._grammar_tokenizer,
                self._renderer.call_format,
                enabled=self.settings.constrained_tools,
            )
        return self._loaded

    def _open_store(self, codec: Any = None) -> Path | None:
        """Open the verified prefix store (none when it is off, and no codec: mlx arrays);
        where the file-hash memo is kept, for the identity."""
        from foundry.local.prefix_store import PrefixCacheStore

        if not self.config.prefix_cache.enabled:
            return None
        self._store = PrefixCacheStore.from_config(self.config, codec=codec)
        return Path(self._store.dir) / "file-hashes.json"

    def flush_saves(self, timeout: float) -> bool:
        """Wait up to `timeout` s for saves running in the background; False if cut short."""
        return True

    def close(self) -> None:
        self._rendered = None
        self._loaded = self._renderer = None

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
        cancel: threading.Event | None = None,
        on_plan: PlanCallback | None = None,
        prefill_cancel: threading.Event | None = None,
    ) -> ModelResponse:
        """One request. `cancel`, when set, stops it between two decode steps (or prefill
        chunks) with error_class "cancelled"; `on_plan` hears, before any prefill, how many
        prompt tokens will be read from a cache and written to the store."""
        from foundry.local.engine import Cancelled

        started_at = utc_now()
        self._ensure_loaded()
        self._cancel, self._on_plan, self._partial = cancel, on_plan, None
        self._prefill_cancel = prefill_cancel
        self._computed = 0  # prompt tokens this request prefilled itself (a cancel counts them)
        self._on_prefill = request.on_prefill
        self.last_stop_sequence = None

        def failed(error_class: str, message: str, usage: Usage | None = None) -> None:
            if on_failed_attempt:
                on_failed_attempt(
                    FailedAttempt(error_class, message, usage or Usage(), started_at=started_at)
                )

        try:
            self._reset_peak_memory()
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
                text, usage, cut_by = self._generate(rendered, request, on_text)
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
            total.peak_memory_mb = self._peak_memory_mb()
        except Cancelled:
            self._after_cancel()
            # Cancelled before its own prefill began: what the cache points computed.
            partial = self._partial or Usage(input_tokens=self._computed)
            failed(CANCELLED, "the request was cancelled", partial)
            raise BackendError(
                "the request was cancelled", "send it again", error_class=CANCELLED
            ) from None
        except BackendError as exc:
            if exc.error_class == OVERLOADED:
                failed(OVERLOADED, exc.message)
            raise
        except FoundryError:
            raise
        except Exception as exc:  # an engine failure mid-request
            failed("local_model_error", str(exc))
            try:
                self._after_failure()
            except Exception:  # the original failure is the one to report
                log.exception("could not reset the local model after a failure")
            raise BackendError(
                f"local model '{self.model}' failed: {exc}",
                "retry; set FOUNDRY_DEBUG=1 for details",
                error_class="local_model_error",
            ) from exc
        finally:
            self._cancel = self._on_plan = self._on_prefill = self._meter = None
            self._prefill_cancel = None
            self._end_request()
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [
            {"type": "tool_use", "id": new_tool_use_id(), "name": c["name"], "input": c["input"]}
            for c in reply.calls
        ]
        if reply.calls and not (cut_by and reply.errors):
            stop = "tool_use"  # (a call a limit cut short ends as that limit says)
        elif self.last_stop_sequence is not None:
            stop = "stop_sequence"
        else:
            stop = STOP_REASONS[cut_by] if cut_by else "end_turn"
        return ModelResponse(content, stop, total, self._reply_model(), None, started_at)
