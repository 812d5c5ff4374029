"""A build as an OpenTelemetry trace, exported over OTLP/HTTP (the `otel` extra).

The tree: the build (root span) → its phases → each model request (a GenAI `chat` span
with the token counts the ledger records), each tool call (`execute_tool`) and each test
run; notes and warnings are events on the phase (or build) they happened in. The recorder
sees only the build's events (foundry.orchestrator.events), so:

* a request span runs from request_started to request_done; a failed attempt is known by
  the warning the session emits right after its row ("<phase> turn <n>: <class>: ..."),
  so a request's span is ended at its request_done time but only once the next event has
  said whether it failed; its retry's span starts where it ended;
* a tool call's span starts at the previous request or tool call of its phase (the loop
  runs the calls one after another, then reports each), a test run's at its end minus its
  measured duration;
* the build's status and error come with build_finished, told once the ledger has them.

Export is batched on the SDK's thread; close() flushes for at most FLUSH_TIMEOUT_S, so a
collector that is down or never answers cannot hold up the end of a build.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from foundry.orchestrator.events import Events

if TYPE_CHECKING:
    from foundry.orchestrator.metered import ModelSession
    from foundry.orchestrator.shell import CommandResult
    from foundry.usage import Usage

FLUSH_TIMEOUT_S = 5.0  # the most a build's end waits for its traces to leave
SCOPE = "foundry.build"
# The GenAI conventions' provider names, where a backend is one of theirs.
PROVIDERS = {"anthropic": "anthropic", "openai": "openai"}
# A phase that ended like this is an error in the trace (a phase that did not finish).
FAILED = {"failed", "error", "interrupted", "budget_exceeded", "turn_limit"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("foundry-build")
    except PackageNotFoundError:
        return "unknown"


def _attributes(**values: Any) -> dict[str, Any]:
    """Span attributes without the unknown ones (OpenTelemetry refuses None)."""
    return {key.replace("__", "."): v for key, v in values.items() if v is not None}


class TraceRecorder(Events):
    def __init__(self, provider: TracerProvider, endpoint: str) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.tracer = provider.get_tracer(SCOPE, _version())
        self.started_ns = time.time_ns()  # the build starts just after its recorders
        self.session: ModelSession | None = None
        self.root: Span | None = None
        self.phase: Span | None = None
        self.phase_name: str | None = None
        self.mark_ns = self.started_ns  # where the phase's next tool call began
        self.pending: tuple[str, int, int] | None = None  # a request: phase, turn, start
        self.held: tuple[Span, str, int | None, int] | None = None  # a request span, its end
        # (status, error) once the build has ended; (None, None) if it never says (a crash).
        self.ended: tuple[str | None, str | None] = (None, None)

    @classmethod
    def from_environment(cls, endpoint: str) -> TraceRecorder:
        """The exporter reads the standard OTEL_EXPORTER_OTLP_* variables itself (endpoint,
        headers, timeout, compression); the resource reads OTEL_SERVICE_NAME and
        OTEL_RESOURCE_ATTRIBUTES."""
        named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        resource = Resource.create(
            {"service.version": _version(), **({} if named else {"service.name": "foundry"})}
        )
        # No exit hook: close() bounds the flush, and an exit must not wait on a collector.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider, endpoint)

    # -- the tree ------------------------------------------------------------------------

    def _parent(self) -> Any:
        span = self.phase or self.root
        return trace.set_span_in_context(span) if span is not None else None

    def _current(self) -> Span | None:
        return self.phase or self.root

    def attach(self, session: ModelSession) -> None:
        self.session = session
        row = session.ledger.build(session.build_id) or {}
        backend = session.backend
        self.root = self.tracer.start_span(
            f"build {row.get('name') or session.build_id}",
            start_time=self.started_ns,
            attributes=_attributes(
                foundry__build__id=session.build_id,
                foundry__build__name=row.get("name"),
                foundry__build__backend=backend.name,
                foundry__build__model=backend.model,
                foundry__build__attempt=row.get("attempts"),
            ),
        )

    def phase_started(self, phase: str) -> None:
        self._release()
        self._end_phase(None)
        self.phase_name = phase
        self.phase = self.tracer.start_span(
            f"phase {phase}",
            context=self._parent(),
            attributes={"foundry.phase": phase},
        )
        self.mark_ns = time.time_ns()

    def phase_finished(self, phase: str, status: str) -> None:
        self._release()
        self._end_phase(status)

    def _end_phase(self, status: str | None) -> None:
        if self.phase is None:
            return
        if status is not None:
            self.phase.set_attribute("foundry.phase.status", status)
            if status in FAILED:
                self.phase.set_status(Status(StatusCode.ERROR, f"the phase ended {status}"))
        self.phase.end()
        self.phase, self.phase_name = None, None

    # -- model requests ------------------------------------------------------------------

    def request_started(self, phase: str, turn: int) -> None:
        self._release()
        self.pending = (phase, turn, time.time_ns())

    def request_done(self, phase: str, turn: int | None, usage: Usage, session: Any) -> None:
        self._release()
        now = time.time_ns()
        if self.pending is not None and self.pending[:2] == (phase, turn):
            start = self.pending[2]
        else:  # a keep-alive: no request_started, its measured duration instead
            start = now - int((usage.duration_ms or 0.0) * 1e6)
        self.pending = None
        backend = self.session.backend if self.session else session.backend
        provider = PROVIDERS.get(backend.name, backend.name)
        cost = None
        if self.session is not None:
            priced = self.session.pricing.cost(usage, backend.model, local=backend.local)
            cost = priced.cost_usd
        span = self.tracer.start_span(
            f"chat {backend.model}",
            context=self._parent(),
            kind=SpanKind.CLIENT,
            start_time=start,
            attributes=_attributes(
                gen_ai__operation__name="chat",
                gen_ai__provider__name=provider,
                gen_ai__system=provider,
                gen_ai__request__model=backend.model,
                gen_ai__request__max_tokens=getattr(self.session, "max_tokens", None),
                # The conventions' input_tokens include the cached ones; the ledger's (and
                # Anthropic's) input_tokens are the uncached rest, kept under foundry.*.
                gen_ai__usage__input_tokens=usage.total_input_tokens,
                gen_ai__usage__output_tokens=usage.output_tokens,
                gen_ai__usage__cache_read__input_tokens=usage.cache_read_tokens,
                gen_ai__usage__cache_creation__input_tokens=usage.cache_write_tokens,
                foundry__usage__uncached_input_tokens=usage.input_tokens,
                foundry__usage__cache_write_1h_tokens=usage.cache_write_1h_tokens or None,
                foundry__request__ttft_ms=usage.ttft_ms,
                foundry__request__purpose="turn" if turn is not None else "keepalive",
                foundry__phase=phase,
                foundry__turn=turn,
                foundry__cost_usd=cost,
            ),
        )
        self.held = (span, phase, turn, now)
        self.mark_ns = now

    def _release(self, failure: str | None = None) -> None:
        """End the held request span: as an error when the event that follows it is the
        session's warning about its failed attempt."""
        if self.held is None:
            return
        span, phase, turn, end = self.held
        self.held = None
        if failure is not None:
            error_class = failure.split(":", 1)[0].strip()
            span.set_attribute("error.type", error_class)
            span.set_status(Status(StatusCode.ERROR, failure))
            if failure.endswith("(retrying)"):  # its retry starts where it ended
                self.pending = (phase, turn, end) if turn is not None else None
        span.end(end_time=end)

    # -- tools, tests, notes -------------------------------------------------------------

    def tool_called(self, phase: str, name: str, detail: str, is_error: bool) -> None:
        self._release()
        now = time.time_ns()
        span = self.tracer.start_span(
            f"execute_tool {name}",
            context=self._parent(),
            start_time=min(self.mark_ns, now),
            attributes=_attributes(
                gen_ai__operation__name="execute_tool",
                gen_ai__tool__name=name,
                foundry__phase=phase,
                foundry__tool__is_error=is_error,
            ),
        )
        if is_error:
            span.set_attribute("error.type", "tool_error")
            span.set_status(Status(StatusCode.ERROR, "the tool call failed"))
        span.end(end_time=now)
        self.mark_ns = now

    def test_run(self, iteration: int, result: CommandResult) -> None:
        self._release()
        now = time.time_ns()
        span = self.tracer.start_span(
            f"test run {iteration}",
            context=self._parent(),
            start_time=now - int(result.duration_s * 1e9),
            attributes=_attributes(
                foundry__test__iteration=iteration,
                foundry__test__command=result.command,
                foundry__test__exit_code=result.exit_code,
                foundry__test__passed=result.passed,
                foundry__test__timed_out=result.timed_out,
                foundry__test__duration_s=result.duration_s,
            ),
        )
        if not result.passed:
            span.set_status(Status(StatusCode.ERROR, "the tests failed"))
        span.end(end_time=now)
        self.mark_ns = now

    def note(self, message: str) -> None:
        self._release()
        self._event("note", message)

    def warning(self, message: str) -> None:
        held = self.held
        if held is not None:
            _, phase, turn, _ = held
            prefix = f"{phase} turn {turn}: "
            self._release(message[len(prefix) :] if message.startswith(prefix) else None)
        self._event("warning", message)

    def _event(self, name: str, message: str) -> None:
        span = self._current()
        if span is not None:
            span.add_event(name, {"message": message})

    # -- the end -------------------------------------------------------------------------

    def build_finished(self, status: str, error: str | None) -> None:
        self.ended = (status, error)

    def close(self) -> None:
        self._release()
        session = self.session
        status, error = self.ended
        if self.phase is not None and session is not None and self.phase_name is not None:
            self._end_phase(session.stats(self.phase_name).status)
        else:
            self._end_phase(None)
        if self.root is not None:
            total = session.total if session is not None else None
            self.root.set_attributes(
                _attributes(
                    foundry__build__status=status,
                    foundry__build__error=error,
                    foundry__build__requests=total.requests if total else None,
                    foundry__build__cost_usd=total.cost_usd if total else None,
                )
            )
            if status is not None and status != "completed":
                self.root.set_status(Status(StatusCode.ERROR, f"the build ended {status}"))
            self.root.end()
            self.root = None
        self._flush()

    def _flush(self) -> None:
        """Send what is left, for at most FLUSH_TIMEOUT_S (the SDK's own flush ignores its
        timeout while an export retries, so it runs on a thread the build does not wait
        for past the bound)."""
        done = threading.Event()

        def flush() -> None:
            try:
                self.provider.force_flush()
                self.provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=flush, name="foundry-trace-flush", daemon=True).start()
        if not done.wait(FLUSH_TIMEOUT_S):
            from foundry import console

            console.warning(
                f"the build's traces did not reach {self.endpoint} within "
                f"{FLUSH_TIMEOUT_S:.0f} s; the rest of them are dropped"
            )
