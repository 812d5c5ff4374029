"""One generation of an in-process local engine once its KV cache is made ready: the limits
that bound the reply and the stop reason each gives, the token loop with its stop sequences
and cancellation, the prefill's bookkeeping (the plan, progress, what a cancel computed),
and the usage, with Claude's meanings and the prefill time that reuse saved.

foundry.backends.local.LocalBackend is built on it, and sets up the state declared below;
an engine's backend supplies the hooks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from foundry.backends.base import ModelRequest, PrefillCallback, TextCallback
from foundry.backends.prefill import PrefillMeter
from foundry.config import LocalEngineConfig
from foundry.errors import BackendError
from foundry.local.stops import StopGate
from foundry.usage import Usage

log = logging.getLogger(__name__)
RATE_SAMPLE_MIN_TOKENS = 64  # prefill rates from fewer tokens are dominated by overhead
CONTEXT_TOO_LONG = "context_too_long"  # the error class the Claude backend uses too
CANCELLED = "cancelled"  # the caller cancelled the request (a client disconnected)
# What may end a reply before the model does, and the Messages API's stop reason for each:
# `max_tokens` is a limit someone set (the client's own, or the operator's cap), the end of
# the context window is the API's model_context_window_exceeded.
CLIENT_LIMIT, OPERATOR_LIMIT, WINDOW_LIMIT = "client", "operator", "window"
STOP_REASONS = {
    CLIENT_LIMIT: "max_tokens",
    OPERATOR_LIMIT: "max_tokens",
    WINDOW_LIMIT: "model_context_window_exceeded",
}
PlanCallback = Callable[[dict[str, Any]], None]


class LocalGeneration:
    """The part of a local backend that runs one generation (see the module docstring)."""

    # Set up by LocalBackend.__init__ (foundry.backends.local).
    model: str
    settings: LocalEngineConfig
    output_cap: int | None
    last_cache_event: dict[str, Any]
    last_stop_sequence: str | None
    _context_window: int | None
    _store: Any
    _identity: Any
    _grammars: Any
    # Set for the running request only: its cancel flags, listeners and usage so far.
    _cancel: threading.Event | None
    _prefill_cancel: threading.Event | None
    _on_plan: PlanCallback | None
    _on_prefill: PrefillCallback | None
    _meter: PrefillMeter | None
    _partial: Usage | None
    _computed: int
    # What prefills cost here, measured: what reuse saves.
    _prefill_rate: float | None
    _prefix_cost: tuple[int, float] | None

    # -- what an engine supplies -------------------------------------------------------------

    def _prepare_cache(
        self, rendered: Any, request: ModelRequest, max_tokens: int, use_store: bool
    ) -> tuple[int, dict[str, Any]]:
        """Make a KV cache hold a proper prefix of the prompt; how many tokens it holds, and
        what it took (reused, written, prefilled, prefill_s, source, reason, load_ms)."""
        raise NotImplementedError

    def _token_stream(
        self,
        new_tokens: list[int],
        *,
        max_tokens: int,
        temperature: float,
        times: Any,
        constraint: Any,
    ) -> Iterator[int]:
        """Prefill `new_tokens` after the prepared prefix, then yield the reply's tokens."""
        raise NotImplementedError

    def _detokenizer(self) -> Any:
        raise NotImplementedError

    def _keep(self) -> None:
        """A generation finished: keep its KV cache for the next request."""

    # -- shared bookkeeping ------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def _prefill_stop(self) -> bool:
        """Whether a prefill stops at its next chunk: at `prefill_cancel` where the caller
        gave one (a server stopping), else at `cancel`. A served client that disconnects
        sets only `cancel`, so its prompt's prefill goes on to the end and its retry finds
        all of it in memory; the reply stops at its first step."""
        if self._prefill_cancel is not None:
            return self._prefill_cancel.is_set()
        return self._stop_requested()

    def _cost_ms(self, tokens: int, fallback_rate: float | None = None) -> float | None:
        """What computing the first `tokens` of a prompt costs: the measured prefix's cost for
        the part it covers, and past its end the fastest prefill rate measured (a low bound:
        later tokens attend to more). A short prefix's cost is never scaled up to a long
        one: a title request's 150 tokens said nothing of an 18k-token prompt's price."""
        if not tokens:
            return 0.0
        covered, measured = 0, 0.0
        if self._prefix_cost is not None:
            length, ms = self._prefix_cost
            covered = min(tokens, length)
            measured = ms * covered / length
        rate = self._prefill_rate or fallback_rate
        if covered == tokens:
            return measured
        return measured + (tokens - covered) / rate * 1000 if rate else None

    def _saved(self, tokens: list[int]) -> bool:
        return bool(self._store.has(self._identity, tokens))

    def _plan(self, tokens: list[int], reused: int, ahead: list[int], source: str, reason: str):
        """Tell the listeners, before any prefill, what will be read and written; from here
        the prefill (the prefix up to the last point `ahead`, then the rest) is counted."""
        self._meter = None
        if self._on_prefill is not None:
            saving = ahead[-1] - reused if ahead else 0
            self._meter = PrefillMeter(self._on_prefill, len(tokens) - reused, saving)
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

    def _prefilled(self, count: int, *, computed: bool = True) -> None:
        """A prefill chunk of `count` tokens is in the cache (the engines call this between
        chunks only); not `computed` when another process's saved state supplied them."""
        if computed:
            self._computed += count
        if self._meter is not None:
            self._meter.advance(count)

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
        from foundry.local.engine import Cancelled, StepTimes

        started = time.perf_counter()
        # What bounds this reply, in the order a tie is reported: the client's own limit
        # first, then the operator's cap, then the model's context window (never past it).
        limits = {CLIENT_LIMIT: request.max_tokens}
        if self.output_cap is not None:
            limits[OPERATOR_LIMIT] = self.output_cap
        room = self._room(len(rendered.tokens))
        if room is not None:
            limits[WINDOW_LIMIT] = room
        binding = min(limits, key=lambda name: limits[name])
        max_tokens = limits[binding]
        held, event = self._prepare_cache(rendered, request, max_tokens, request.ttl is not None)
        new_tokens = rendered.tokens[held:]
        times = StepTimes()
        detok = self._detokenizer()
        detok.reset()
        temperature = (
            request.temperature if request.temperature is not None else self.settings.temperature
        )
        gate = StopGate(getattr(request, "stop_sequences", ()))
        constraint = self._grammars.for_request(request)
        ttft = None
        event["new_tokens"] = len(new_tokens)
        self.last_cache_event = {**event, "max_tokens": max_tokens}
        generated = 0
        try:
            for token in self._token_stream(
                new_tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                times=times,
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
            self._partial = self._usage(
                rendered, event, times, ttft, started, generated, cancelled=True
            )
            raise
        if ttft is None:
            ttft = time.perf_counter() - started
        self._keep()
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
        # The loop guard's stop is not a cut: the model was repeating itself, and what it
        # said before is all it had to say (docs/serve.md, stop reasons).
        cut = not times.ended_on_eos and gate.hit is None and not times.looped
        return gate.text, usage, binding if cut else None

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
        *,
        cancelled: bool = False,
    ) -> Usage:
        prefilled = event["prefilled"] + event["new_tokens"]
        prefill_s = event["prefill_s"] + times.prefill_s
        rate = prefilled / prefill_s if prefill_s > 0 else None
        if rate and prefilled >= RATE_SAMPLE_MIN_TOKENS and not cancelled:
            self._prefill_rate = max(rate, self._prefill_rate or 0.0)
        best_rate = self._prefill_rate or rate
        # A cancelled request counts the tokens it prefilled, not the prompt it never got to.
        computed = self._computed if cancelled else len(rendered.tokens) - event["reused"]
        written = min(event["written"], computed)  # a cancelled prefill wrote what it computed
        return Usage(
            input_tokens=max(computed - written, 0),
            output_tokens=generated,
            cache_read_tokens=event["reused"],
            cache_write_5m_tokens=written,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            duration_ms=(time.perf_counter() - started) * 1000,
            prefill_tokens_per_s=rate,
            generation_tokens_per_s=(
                times.generated / times.generate_s if times.generate_s > 0 else None
            ),
            prefill_saved_ms=self._saved_ms(event, best_rate),
        )

    def _saved_ms(self, event: dict[str, Any], fallback_rate: float | None) -> float | None:
        """Prefill time the reused tokens saved, net of loading them (_cost_ms: from what was
        measured, never scaled past it). Dividing by this request's own rate instead
        overstated it up to 2x, since a few tokens appended to a long prefix prefill far
        slower than the prefix's average."""
        cost = self._cost_ms(event["reused"], fallback_rate)
        return None if cost is None else max(cost - event.get("load_ms", 0.0), 0.0)
