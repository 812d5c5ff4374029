"""What runs a served request, apart from HTTP: the model mapping, counting and the context
policy, the response cache, the queue's worker, the ledger rows and the HIT/MISS log.

The ASGI routes (foundry.server.app) call in here; the worker thread runs `_run`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry.backends.base import FailedAttempt, ModelResponse
from foundry.errors import BackendError
from foundry.local.chat import ClientRequest
from foundry.server.cache_log import cache_line, cold_prefill_line
from foundry.server.context import Trimmed, fit
from foundry.server.disk_budget import BudgetedStore, DiskBudget
from foundry.server.protocol import ApiError, ParsedRequest, new_message_id
from foundry.server.queue import SHUTTING_DOWN, Job, JobCancelled, RequestQueue
from foundry.server.response_cache import RecordedReply, ResponseCache
from foundry.server.session import ServeSession
from foundry.server.shutdown import GRACE_S, Stop
from foundry.server.stats import ServeStats
from foundry.timestamps import utc_now
from foundry.usage import Usage

log = logging.getLogger(__name__)
SAVES_FLUSH_S = 10.0  # how long a stop waits for the conversations being saved to disk
CLAUDE_PREFIX = "claude-"
# The backend's error classes that are the client's doing or the server's load, not a fault.
STATUS_FOR_CLASS = {"context_too_long": 400, "overloaded": 529, "cancelled": 529}
# The clients a disk budget tells apart: with --api-key, its holder; without, every client
# (which can only be on this machine) together.
LOOPBACK, KEYED = "loopback clients", "the --api-key client"


@dataclass
class ServeSettings:
    model: str  # the served model: a name from `foundry models list` or a directory
    api_key: str | None = None
    context_policy: str = "error"
    keep_last: int = 4
    max_request_bytes: int = 32 * 1024 * 1024
    ping_interval_s: float = 5.0
    queue_size: int = 16
    disk_write_bytes_per_hour: int | None = None  # per client; None: unbounded

    @property
    def model_name(self) -> str:
        return Path(self.model).name or self.model


@dataclass
class Prepared:
    """A checked request: its response-cache key and the ids the client and the ledger see;
    once fitted (`ServeService.fit`), its prompt length and what the policy trimmed."""

    parsed: ParsedRequest
    key: str | None
    request: ClientRequest = field(init=False)
    prompt_tokens: int = 0
    trimmed: Trimmed | None = None
    trimmed_header: str | None = None
    message_id: str = field(default_factory=new_message_id)
    request_id: str = field(default_factory=lambda: f"req_local_{uuid.uuid4().hex[:24]}")
    client: str = LOOPBACK  # whose disk budget its prefix saves are charged to
    plan: dict[str, Any] | None = None  # the backend's cache plan, once made
    started_at: str = field(default_factory=utc_now)
    received: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.request = self.parsed.request

    def headers(self) -> dict[str, str]:
        headers = {"request-id": self.request_id}
        if self.trimmed is not None:
            self.trimmed_header = self.trimmed.header()
        if self.trimmed_header is not None:
            headers["x-foundry-context-trimmed"] = self.trimmed_header
        return headers


def api_error_for(exc: BaseException) -> ApiError:
    """The client's view of a failure: no traceback, no internals."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BackendError):
        status = STATUS_FOR_CLASS.get(exc.error_class)
        if status is not None:
            return ApiError(status, exc.message)
    if isinstance(exc, JobCancelled):
        return ApiError(529, exc.reason)
    return ApiError(500, "the local model failed on this request; the server log says why")


class ServeService:
    def __init__(
        self,
        backend: Any,
        settings: ServeSettings,
        *,
        session: ServeSession | None = None,
        response_cache: ResponseCache | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.session = session
        self.response_cache = response_cache
        self.stats = ServeStats()
        self.window: int | None = backend.context_window
        self.default_temperature = backend.settings.temperature
        self.tool_tag: str = backend.tool_call_tag
        self.queue = RequestQueue(self._run, settings.queue_size)
        self.shutting_down = False
        self._stop: Stop | None = None
        self.disk_budget: DiskBudget | None = None
        store = getattr(backend, "_store", None)
        if settings.disk_write_bytes_per_hour is not None and store is not None:
            self.disk_budget = DiskBudget(settings.disk_write_bytes_per_hour)
            backend._store = BudgetedStore(store, self.disk_budget)

    # -- before a request runs ---------------------------------------------------------------

    def check_model(self, model_id: str) -> None:
        """The mapping rule: the served model's own name, or any claude-* id; else a 404."""
        if model_id in (self.settings.model, self.settings.model_name):
            return
        if model_id.startswith(CLAUDE_PREFIX):
            return
        raise ApiError(
            404,
            f"model: {model_id} (this server serves '{self.settings.model_name}'; every "
            f"{CLAUDE_PREFIX}* id maps to it)",
        )

    def count(self, request: ClientRequest) -> int:
        return int(self.backend.count_request_tokens(request))

    def begin(self, parsed: ParsedRequest) -> Prepared:
        """A request's bookkeeping and response-cache key: cheap, so a replay needs no more."""
        key = None
        if self.response_cache is not None:
            key = parsed.response_key(self.default_temperature)
        return Prepared(parsed, key, client=KEYED if self.settings.api_key else LOOPBACK)

    def fit(self, prepared: Prepared) -> Prepared:
        """Count the prompt exactly and apply the context policy (on a worker thread of the
        event loop: tokenizing a long prompt takes a while)."""
        request = prepared.request
        tokens = self.count(request)
        trimmed = None
        if self.window is not None:
            try:
                request, tokens, trimmed = fit(
                    request,
                    tokens,
                    window=self.window,
                    policy=self.settings.context_policy,
                    keep_last=self.settings.keep_last,
                    reply_room=min(request.max_tokens, self.backend.max_tokens),
                    count=self.count,
                )
            except ApiError:
                self.reject(prepared, "context_too_long")
                raise
        if trimmed is not None:
            self.stats.record_trim()
            log.warning(
                "trimmed %d messages (%d tokens) to fit the %d-token window",
                trimmed.messages,
                trimmed.tokens,
                self.window,
            )
        prepared.request, prepared.prompt_tokens, prepared.trimmed = request, tokens, trimmed
        return prepared

    def replay(self, prepared: Prepared) -> RecordedReply | None:
        """The recorded reply for this exact request, if any. The prompt is not even counted:
        the recording knows its length (and what the context policy trimmed)."""
        if prepared.key is None or self.response_cache is None:
            return None
        reply = self.response_cache.get(prepared.key)
        if reply is None:
            return None
        prepared.prompt_tokens, prepared.trimmed_header = reply.input_tokens, reply.trimmed
        return reply

    def record_replay(self, prepared: Prepared, reply: RecordedReply) -> None:
        """The ledger row and stats of a replay (run after the response has gone out)."""
        elapsed = (time.monotonic() - prepared.received) * 1000
        usage = Usage(
            cache_read_tokens=prepared.prompt_tokens,
            output_tokens=reply.output_tokens,
            ttft_ms=elapsed,
            duration_ms=elapsed,
            prefill_saved_ms=reply.duration_ms,
        )
        self.stats.record_replay(usage, 0.0)
        self._record(prepared, usage, stop_reason=reply.stop_reason)
        log.info(
            "HIT response cache: replayed %d output tokens in %.0f ms (%s)",
            reply.output_tokens,
            elapsed,
            prepared.request_id,
        )

    def remember(
        self,
        prepared: Prepared,
        response: ModelResponse,
        content: list[dict[str, Any]],
        stop_sequence: str | None,
        deltas: list[str],
    ) -> None:
        """Record a finished greedy reply for replay, as the client received it."""
        if prepared.key is None or self.response_cache is None:
            return
        usage = response.usage
        self.response_cache.put(
            prepared.key,
            RecordedReply(
                content=content,
                stop_reason=response.stop_reason,
                stop_sequence=stop_sequence,
                input_tokens=prepared.prompt_tokens,
                output_tokens=usage.output_tokens,
                duration_ms=usage.duration_ms or 0.0,
                text_deltas=list(deltas),
                trimmed=prepared.trimmed.header() if prepared.trimmed else None,
            ),
        )

    def reject(self, prepared: Prepared, error_class: str) -> None:
        """A request turned away before it ran (queue full, shutting down)."""
        self.stats.record_error(error_class)
        self._record(prepared, Usage(), status="error", error_class=error_class)

    def record_cancelled(self, prepared: Prepared, usage: Usage) -> None:
        """A running request a shutdown ended without waiting for the engine's word."""
        self.stats.record_error("cancelled", usage)
        self._record(prepared, usage, status="cancelled", error_class="cancelled")

    # -- the worker thread -------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        prepared: Prepared = job.payload
        # A retry that waited behind the run its client left: that run's reply is recorded.
        if (reply := self.replay(prepared)) is not None:
            if job.settle():
                job.post("replay", reply)
            return
        failures: list[FailedAttempt] = []
        budget = self.disk_budget
        acting = budget.acting_for(prepared.client) if budget else contextlib.nullcontext()

        def on_plan(plan: dict[str, Any]) -> None:
            if budget is not None and budget.over(prepared.client):
                plan = {**plan, "cache_write": 0}  # it will not be saved: message_start says so
            if plan["cache_write"]:  # the long first wait: say what it is, and that it is once
                log.info(
                    "cold prefill: computing %d prefix tokens and saving them, so this happens "
                    "once; later requests read them from disk (%s)",
                    plan["cache_write"],
                    prepared.request_id,
                )
            prepared.plan = plan
            job.post("plan", plan)

        try:
            with acting:
                response = self.backend.complete(
                    prepared.request,
                    on_text=lambda text: job.post("text", text),
                    on_failed_attempt=failures.append,
                    cancel=job.cancel,
                    on_plan=on_plan,
                    prefill_cancel=job.stop_prefill,
                )
        except BackendError as exc:
            if not job.settle():  # a shutdown stopped waiting for it: answered and recorded
                return
            usage = failures[-1].usage if failures else Usage()
            cancelled = exc.error_class == "cancelled"
            self.stats.record_error(exc.error_class, usage)
            self._record(
                prepared,
                usage,
                status="cancelled" if cancelled else "error",
                error_class=exc.error_class,
            )
            if cancelled:
                log.info("cancelled: %s (%s)", job.cancel_reason, prepared.request_id)
                exc = BackendError(job.cancel_reason, error_class="cancelled")
            else:
                log.warning("%s: %s (%s)", exc.error_class, exc.message, prepared.request_id)
            job.post("error", exc)
            return
        except Exception as exc:  # a bug or an mlx failure outside the backend's handling
            if not job.settle():
                return
            log.error(
                "request %s failed: %s",
                prepared.request_id,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            self.stats.record_error("server_error")
            self._record(prepared, Usage(), status="error", error_class="server_error")
            job.post("error", exc)
            return
        if not job.settle():  # finished just as a shutdown gave up on it: already answered
            return
        event, usage = self.backend.last_cache_event, response.usage
        self.stats.record_run(usage, event.get("source"))
        self._record(prepared, usage, stop_reason=response.stop_reason)
        stop_sequence = self.backend.last_stop_sequence
        if not prepared.parsed.stream:  # recorded here, so a run whose client left counts too
            self.remember(prepared, response, response.content, stop_sequence, [])
        if usage.cache_write_tokens:
            log.info("%s", cold_prefill_line(event, usage, prepared.request_id))
        log.info("%s", cache_line(usage, event, prepared.request_id))
        job.post("done", (response, stop_sequence))

    def _record(
        self,
        prepared: Prepared,
        usage: Usage,
        *,
        status: str = "ok",
        error_class: str | None = None,
        stop_reason: str | None = None,
    ) -> None:
        if self.session is None:
            return
        try:
            self.session.record(
                usage,
                started_at=prepared.started_at,
                status=status,
                error_class=error_class,
                stop_reason=stop_reason,
                request_id=prepared.message_id,
            )
        except Exception as exc:  # the ledger is a record, never a reason to fail a reply
            log.warning("could not record request %s on the ledger: %s", prepared.request_id, exc)

    # -- state and shutdown ------------------------------------------------------------------

    def cache_stats(self, *, paths: bool = False) -> dict[str, Any]:
        """What the caches hold and did (foundry.server.cache_stats)."""
        from foundry.server.cache_stats import cache_stats

        return cache_stats(self, paths=paths)

    def begin_shutdown(self, reason: str = SHUTTING_DOWN) -> Stop:
        """Stop taking work (foundry.server.shutdown): waiting requests are answered now, the
        running one at its next step, or after shutdown.GRACE_S if that step lasts longer."""
        if self._stop is None:
            self.shutting_down = True
            self._stop = Stop(self, reason)
        return self._stop

    def close(self) -> dict[str, Any]:
        """Stop (begin_shutdown), wait for the requests to be answered and recorded, then
        close the session's ledger row; returns the stats. The worker may still be inside
        an engine step afterwards (queue.worker_alive): its request is settled."""
        stop = self.begin_shutdown()
        stop.wait()
        self.queue.close(timeout=0 if stop.gave_up else GRACE_S)
        self.backend.flush_saves(SAVES_FLUSH_S)  # the conversations saved so far, on disk whole
        stats = self.cache_stats(paths=True)
        if self.session is not None:
            try:
                self.session.close(stats["since_start"])
            except Exception as exc:
                log.warning("could not close the serve session on the ledger: %s", exc)
        return stats
