"""Every model request of a build goes through here: the budget check before it, the ledger
row after it (failed attempts too), per-phase totals, and cache keep-alives while idle."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from foundry.backends.base import FailedAttempt, Message, ModelRequest, ModelResponse, Usage
from foundry.errors import BackendError, BudgetExceeded
from foundry.orchestrator.display import Events

if TYPE_CHECKING:
    from foundry.backends.base import Backend, ToolSpec
    from foundry.ledger import Ledger
    from foundry.pricing import PricingTable

_MILLION = Decimal(1_000_000)


@dataclass
class PhaseStats:
    requests: int = 0
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cost_usd: float | None = 0.0
    uncached_cost_usd: float | None = 0.0
    status: str = "pending"
    last_tool: str | None = None

    @property
    def total_input(self) -> int:
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )

    @property
    def hit_rate(self) -> float | None:
        total = self.total_input
        return self.cache_read_tokens / total if total else None

    def add(self, usage: Usage, cost: float | None, uncached: float | None) -> None:
        self.requests += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_read_tokens += usage.cache_read_tokens
        self.cache_write_5m_tokens += usage.cache_write_5m_tokens
        self.cache_write_1h_tokens += usage.cache_write_1h_tokens
        # One unpriced request makes the total unknown, never silently low.
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost
        if uncached is None or self.uncached_cost_usd is None:
            self.uncached_cost_usd = None
        else:
            self.uncached_cost_usd += uncached


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
        ttl: str | None,
        events: Events,
        max_cost: float | None = None,
        keepalive_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self.clock = clock
        self.phases: dict[str, PhaseStats] = {}
        self.total = PhaseStats()
        self.current_phase: str | None = None
        self.last_request_at: float | None = None
        self._warned: set[str] = set()
        self._prefix_tokens: int | None = None
        self.last_request: ModelRequest | None = None

    # -- accounting -------------------------------------------------------------------
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
        )
        # The ledger itself warns (once per model) when a cost is NULL.
        cost = recorded.cost
        for stats in (self.stats(phase or "-"), self.total):
            stats.add(usage, cost.cost_usd, cost.uncached_cost_usd)
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
        """A conservative cost of the next request: input not sent before at the cache-write
        price (or the input price, whichever is higher), the rest at the cache-read price,
        and a full max_tokens of output. None when the model has no price."""
        price = self.pricing.get(self.backend.model)
        if self.backend.name == "mlx":
            return 0.0
        if price is None or not price.priced:
            return None
        messages = conversation.messages if conversation else []
        sent = conversation.sent if conversation else 0
        new = self._tokens([m.to_dict() for m in messages[sent:]])
        old = self._tokens([m.to_dict() for m in messages[:sent]]) if sent else 0
        prefix_expired = self.last_request_at is None or self.ttl is None
        if prefix_expired:
            new += self.prefix_tokens()
        else:
            old += self.prefix_tokens()
        assert price.input is not None and price.output is not None
        write = {"5m": price.cache_write_5m, "1h": price.cache_write_1h}.get(self.ttl or "")
        new_price = max(price.input, write or price.input)
        read_price = price.cache_read if self.ttl else price.input
        assert read_price is not None
        output = self.max_tokens if max_tokens is None else max_tokens
        total = new * new_price + old * read_price + output * price.output
        return float(total / _MILLION)

    def check_budget(
        self, conversation: Conversation | None, max_tokens: int | None = None
    ) -> None:
        if self.max_cost is None:
            return
        spent = self.total.cost_usd
        estimate = self.estimate_cost(conversation, max_tokens)
        if spent is None or estimate is None:
            self.warn_once(
                f"--max-cost cannot be enforced: model '{self.backend.model}' has no price"
            )
            return
        if spent + estimate > self.max_cost:
            raise BudgetExceeded(
                f"stopped before the next request: ${spent:.4f} spent + about ${estimate:.4f} "
                f"for the next request would exceed --max-cost ${self.max_cost:.2f}",
                "raise --max-cost, or resume with --phases",
            )

    # -- requests ---------------------------------------------------------------------
    def send(self, conversation: Conversation, phase: str, turn: int) -> ModelResponse:
        """One model turn: budget check, the request, and its ledger row(s)."""
        from foundry.ledger import utc_now

        self.check_budget(conversation)
        request = ModelRequest(
            model=self.backend.model,
            system=self.system,
            tools=self.tools,
            messages=list(conversation.messages),
            max_tokens=self.max_tokens,
            ttl=self.ttl,  # type: ignore[arg-type]
        )
        self.events.request_started(phase, turn)
        self.last_request = request
        response = self._complete(request, phase, turn, "turn", utc_now())
        conversation.sent = len(conversation.messages)
        return response

    def _complete(
        self,
        request: ModelRequest,
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
            self.events.warning(
                f"{phase} turn {turn}: {attempt.error_class}: {attempt.message}"
                + (" (retrying)" if attempt.will_retry else "")
            )

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
        from foundry.backends.anthropic.client import keepalive_request
        from foundry.ledger import utc_now

        base = self.last_request or ModelRequest(
            model=self.backend.model,
            system=self.system,
            tools=self.tools,
            messages=[],
            max_tokens=1,
            ttl=self.ttl,  # type: ignore[arg-type]
        )
        request = keepalive_request(base)
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
            self._complete(request, self.current_phase, None, "keepalive", utc_now())
        except BackendError as exc:  # recorded as failed attempts; the build goes on
            self.events.warning(f"cache keep-alive failed: {exc}")
