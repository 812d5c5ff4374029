"""Every model request of a build goes through here: the budget check before it, the ledger
row after it (failed attempts too), per-phase totals, and cache keep-alives while idle."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foundry.backends.base import (
    FailedAttempt,
    Message,
    ModelRequest,
    ModelResponse,
    PrefillCallback,
    ToolChoice,
)
from foundry.errors import BackendError, BudgetExceeded, LedgerFull
from foundry.orchestrator.events import Events
from foundry.orchestrator.tools import FINISH_PHASE
from foundry.usage import Usage

if TYPE_CHECKING:
    from foundry.backends.base import Backend, ToolSpec, Ttl
    from foundry.ledger import Ledger
    from foundry.pricing import Cost, PricingTable


@dataclass
class PhaseStats:
    usage: Usage = field(default_factory=Usage)  # token counts summed over the requests
    requests: int = 0
    turns: int = 0
    cost_usd: float | None = 0.0
    uncached_cost_usd: float | None = 0.0
    status: str = "pending"
    last_tool: str | None = None

    def add(self, usage: Usage, cost: Cost) -> None:
        self.requests += 1
        self.usage += usage
        # One unpriced request makes the total unknown, never silently low.
        self.cost_usd = _plus(self.cost_usd, cost.cost_usd)
        self.uncached_cost_usd = _plus(self.uncached_cost_usd, cost.uncached_cost_usd)

    def merge(self, other: PhaseStats) -> None:
        """Add another tally's requests, tokens and costs (turns and status stay)."""
        self.requests += other.requests
        self.usage += other.usage
        self.cost_usd = _plus(self.cost_usd, other.cost_usd)
        self.uncached_cost_usd = _plus(self.uncached_cost_usd, other.uncached_cost_usd)


def _plus(total: float | None, value: float | None) -> float | None:
    return None if total is None or value is None else total + value


@dataclass
class Conversation:
    """One phase's messages, and how many of them an earlier request already sent."""

    messages: list[Message] = field(default_factory=list)
    sent: int = 0


class ModelSession:
    def __init__(
        self,
        *,
        backend: Backend,
        ledger: Ledger,
        build_id: str,
        pricing: PricingTable,
        system: str,
        tools: list[ToolSpec],
        max_tokens: int,
        ttl: Ttl | None,
        events: Events,
        max_cost: float | None = None,
        keepalive_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        spent_before: float = 0.0,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.build_id = build_id
        self.pricing = pricing
        self.system = system
        self.tools = tools
        self.max_tokens = max_tokens
        self.ttl = ttl
        self.events = events
        self.max_cost = max_cost
        self.keepalive_after_s = keepalive_after_s
        self.spent_before = spent_before  # earlier attempts at a resumed build count too
        self.clock = clock
        self.phases: dict[str, PhaseStats] = {}
        self.total = PhaseStats()
        self.unrecorded = PhaseStats()  # requests the ledger could not take (a full disk)
        self.current_phase: str | None = None
        self.last_request_at: float | None = None
        self._warned: set[str] = set()
        self._prefix_tokens: int | None = None
        self.last_request: ModelRequest | None = None

    # -- accounting -------------------------------------------------------------------
    @property
    def spent(self) -> float | None:
        """What the build has cost so far, earlier attempts included; None when unpriced."""
        cost = self.total.cost_usd
        return None if cost is None else cost + self.spent_before

    def stats(self, phase: str) -> PhaseStats:
        return self.phases.setdefault(phase, PhaseStats())

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.events.warning(message)

    def _record(
        self,
        *,
        phase: str | None,
        turn: int | None,
        usage: Usage,
        started_at: str,
        purpose: str,
        status: str = "ok",
        error_class: str | None = None,
        stop_reason: str | None = None,
        request_id: str | None = None,
    ) -> None:
        try:
            recorded = self.ledger.record_request(
                build_id=self.build_id,
                phase=phase,
                turn=turn,
                backend=self.backend.name,
                model=self.backend.model,
                usage=usage,
                started_at=started_at,
                status=status,
                error_class=error_class,
                stop_reason=stop_reason,
                provider_request_id=request_id,
                purpose=purpose,
                local=self.backend.local,  # per instance: a loopback server is local
            )
        except LedgerFull:
            # Paid for but not on the ledger: kept for the summary, and the build ends.
            cost = self.pricing.cost(usage, self.backend.model, local=self.backend.local)
            self.unrecorded.add(usage, cost)
            self.events.warning(
                f"a {phase or '-'} request could not be recorded (the ledger's disk is full); "
                f"its usage goes to summary.json: in {usage.input_tokens:,}, out "
                f"{usage.output_tokens:,}, cache read {usage.cache_read_tokens:,}, cache write "
                f"{usage.cache_write_tokens:,}"
            )
            raise
        # The ledger itself warns (once per model) when a cost is NULL.
        for stats in (self.stats(phase or "-"), self.total):
            stats.add(usage, recorded.cost)
        self.events.request_done(phase or "-", turn, usage, self)

    # -- the budget -------------------------------------------------------------------
    def _tokens(self, payload: Any) -> int:
        from foundry.prompt.tokens import estimate_tokens

        text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
        return estimate_tokens(text)

    def prefix_tokens(self) -> int:
        if self._prefix_tokens is None:
            tools = [t.to_dict() for t in self.tools]
            self._prefix_tokens = self._tokens(self.system) + self._tokens(tools)
        return self._prefix_tokens

    def estimate_cost(
        self, conversation: Conversation | None, max_tokens: int | None = None
    ) -> float | None:
        """A conservative cost of the next request: input not sent before as a cache write
        (as uncached input with no TTL), the rest as a cache read, and a full max_tokens of
        output. None when the model has no price."""
        messages = conversation.messages if conversation else []
        sent = conversation.sent if conversation else 0
        new = self._tokens([m.to_dict() for m in messages[sent:]])
        old = self._tokens([m.to_dict() for m in messages[:sent]]) if sent else 0
        if self.last_request_at is None or self.ttl is None:
            new += self.prefix_tokens()
        else:
            old += self.prefix_tokens()
        output = self.max_tokens if max_tokens is None else max_tokens
        if self.ttl is None:
            usage = Usage(input_tokens=new + old, output_tokens=output)
        else:
            write = "cache_write_1h_tokens" if self.ttl == "1h" else "cache_write_5m_tokens"
            usage = Usage(output_tokens=output, cache_read_tokens=old, **{write: new})
        return self.pricing.cost(usage, self.backend.model, local=self.backend.local).cost_usd

    def check_budget(
        self,
        conversation: Conversation | None,
        max_tokens: int | None = None,
        *,
        before: str = "the next request",
    ) -> None:
        """Stop before an attempt that could take spend past --max-cost. Runs before every
        attempt, retries included, against what the ledger has recorded so far."""
        if self.max_cost is None:
            return
        spent = self.spent
        estimate = self.estimate_cost(conversation, max_tokens)
        if spent is None or estimate is None:
            self.warn_once(
                f"--max-cost cannot be enforced: model '{self.backend.model}' has no price"
            )
            return
        if spent + estimate > self.max_cost:
            raise BudgetExceeded(
                f"stopped before {before}: ${spent:.4f} spent + about ${estimate:.4f} "
                f"for it would exceed --max-cost ${self.max_cost:.2f}",
                "raise --max-cost and continue with `foundry resume`",
            )

    # -- requests ---------------------------------------------------------------------
    def tool_choice(
        self, *, last_turn: bool, finish_requires: tuple[str, ...] = ()
    ) -> ToolChoice | None:
        """What a turn's reply must call. A local model must make one tool call every turn,
        and call finish_phase on its last, with the arguments the phase's finish needs: a
        phase's turns are all tool calls, a text-only turn is a wasted one, and a small
        model otherwise rambles, or repeats a call, up to the output limit. One call per
        turn also lets it see each result before its next call. Claude keeps "auto":
        forcing a call would stop it writing its reasoning before the call."""
        if not self.backend.local:
            return None
        if last_turn and FINISH_PHASE in self.tools:
            return ToolChoice("tool", FINISH_PHASE.name, required=finish_requires)
        return ToolChoice("any", parallel=False)

    def send(
        self,
        conversation: Conversation,
        phase: str,
        turn: int,
        *,
        last_turn: bool = False,
        finish_requires: tuple[str, ...] = (),
    ) -> ModelResponse:
        """One model turn: budget check, the request, and its ledger row(s)."""
        from foundry.ledger import utc_now

        self.check_budget(conversation)
        request = ModelRequest(
            model=self.backend.model,
            system=self.system,
            tools=self.tools,
            messages=list(conversation.messages),
            max_tokens=self.max_tokens,
            ttl=self.ttl,
            tool_choice=self.tool_choice(last_turn=last_turn, finish_requires=finish_requires),
            on_prefill=self._prefill_listener(),
        )
        self.events.request_started(phase, turn)
        self.last_request = request
        response = self._complete(request, conversation, phase, turn, "turn", utc_now())
        conversation.sent = len(conversation.messages)
        return response

    def _prefill_listener(self) -> PrefillCallback:
        """A local model's prefill progress, for the display. A plain function, so a
        request's deepcopy does not copy the display with it."""
        show = self.events.prefill_progress
        return lambda progress: show(progress)

    def _complete(
        self,
        request: ModelRequest,
        conversation: Conversation,  # what the budget estimate of a retry prices
        phase: str | None,
        turn: int | None,
        purpose: str,
        started_at: str,
    ) -> ModelResponse:
        def failed(attempt: FailedAttempt) -> None:
            self._record(
                phase=phase,
                turn=turn,
                usage=attempt.usage,
                started_at=attempt.started_at or started_at,
                purpose=purpose,
                status="error",
                error_class=attempt.error_class,
                request_id=attempt.request_id,
            )
            stop: BudgetExceeded | None = None
            if attempt.will_retry:  # a retry is paid like a request: check before it
                try:
                    self.check_budget(conversation, request.max_tokens, before="a retry")
                except BudgetExceeded as exc:
                    stop = exc
            retrying = " (retrying)" if attempt.will_retry and stop is None else ""
            self.events.warning(
                f"{phase} turn {turn}: {attempt.error_class}: {attempt.message}{retrying}"
            )
            if stop is not None:
                raise stop

        try:
            response = self.backend.complete(
                request, on_text=self.events.text_delta, on_failed_attempt=failed
            )
        finally:
            self.last_request_at = self.clock()
        self._record(
            phase=phase,
            turn=turn,
            usage=response.usage,
            started_at=response.started_at or started_at,
            purpose=purpose,
            stop_reason=response.stop_reason,
            request_id=response.request_id,
        )
        return response

    # -- keep-alive -------------------------------------------------------------------
    def maybe_keepalive(self) -> None:
        """Called while the orchestrator waits on a command: refresh the prompt cache with
        a minimal request once the build has been idle longer than keepalive_after_s."""
        if self.keepalive_after_s is None or self.last_request_at is None or self.ttl is None:
            return
        if self.clock() - self.last_request_at < self.keepalive_after_s:
            return
        from foundry.ledger import utc_now

        base = self.last_request or ModelRequest(
            model=self.backend.model,
            system=self.system,
            tools=self.tools,
            messages=[],
            max_tokens=1,
            ttl=self.ttl,
        )
        request = self.backend.keepalive_request(base)
        if request is None:  # this backend's cache never expires: nothing to keep alive
            self.keepalive_after_s = None
            return
        try:
            # Everything in a keep-alive was sent before: priced as cache reads.
            sent = Conversation(list(request.messages), len(request.messages))
            self.check_budget(sent, max_tokens=request.max_tokens)
        except BudgetExceeded:
            # A keep-alive is optional: skip it (and later ones) rather than end the build.
            self.keepalive_after_s = None
            self.warn_once("cache keep-alives stopped: the next one could exceed --max-cost")
            return
        self.events.note(f"cache keep-alive after {self.keepalive_after_s:.0f}s idle")
        try:
            self._complete(request, sent, self.current_phase, None, "keepalive", utc_now())
        except BudgetExceeded:  # its retry could pass --max-cost: no more keep-alives
            self.keepalive_after_s = None
            self.warn_once("cache keep-alives stopped: the next one could exceed --max-cost")
        except BackendError as exc:  # recorded as failed attempts; the build goes on
            self.events.warning(f"cache keep-alive failed: {exc}")
