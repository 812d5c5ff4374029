"""When to retry a failed model request, and how long to wait (RetryPolicy: pure, no
sleeping), and the loop that runs a request's attempts under it (Attempts)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from foundry.backends.base import AttemptCallback, FailedAttempt
from foundry.errors import BackendError
from foundry.timestamps import utc_now
from foundry.usage import Usage

_T = TypeVar("_T")

# Failures that a later identical request can succeed at. Everything else (a bad key, a
# bad request, a context too long) fails the same way again, so it is never retried.
RETRYABLE = frozenset(
    {
        "rate_limited",
        "overloaded",
        "server_error",
        "timeout",
        "connection",
        "stream_interrupted",
        "malformed_stream",  # a proxy's glitch can pass; the hint says where to look if not
    }
)
BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0


@dataclass
class RetryPolicy:
    max_retries: int
    budget_s: float  # total time from the first attempt after which no retry starts
    base_delay_s: float = BASE_DELAY_S
    max_delay_s: float = MAX_DELAY_S
    rng: Callable[[], float] = field(default=random.random)

    def backoff(self, retries_done: int) -> float:
        """Exponential backoff with jitter in [50%, 100%] of the step, so clients spread out."""
        step = min(self.max_delay_s, self.base_delay_s * (2**retries_done))
        return step * (0.5 + 0.5 * self.rng())

    def next_delay(
        self,
        *,
        error_class: str,
        retries_done: int,
        elapsed_s: float,
        retry_after_s: float | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now.

        A server's retry-after is a floor (never retry sooner than asked). A wait that would
        end past the budget gives up at once rather than sleeping towards a certain failure.
        """
        if error_class not in RETRYABLE or retries_done >= self.max_retries:
            return None
        delay = self.backoff(retries_done)
        if retry_after_s is not None and retry_after_s > 0:
            delay = max(delay, retry_after_s)
        if elapsed_s + delay > self.budget_s:
            return None
        return delay


def retry_after_seconds(headers: Any) -> float | None:
    """A response's retry-after-ms / retry-after (seconds) as seconds; None when absent or an
    HTTP date (the backoff then decides)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = headers.get(name)
            if value is not None:
                return float(value) * scale
        except (AttributeError, TypeError, ValueError):
            continue
    return None


class AttemptFailed(Exception):
    """One attempt of a model request failed: how (an error class), what to tell the user,
    the usage the server reported before it failed, and how soon it may be retried.
    `retry_now`: the backend changed what it sends (a server quirk it adapted to), so the
    next attempt goes at once whatever the error class."""

    def __init__(
        self,
        error_class: str,
        message: str,
        usage: Usage | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        *,
        retry_now: bool = False,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.usage = usage if usage is not None else Usage()
        self.request_id = request_id
        self.retry_after = retry_after
        self.retry_now = retry_now


@dataclass
class Attempts:
    """Runs a request's attempts under a RetryPolicy: each failure is reported (with its
    usage) to on_failed_attempt, waited on and retried, or turned into one BackendError whose
    message names the service and whose hint comes from `hints` (error class -> hint)."""

    policy: RetryPolicy
    service: str  # "Anthropic", "OpenAI-compatible server at http://..."
    hints: dict[str, str]
    gave_up_hint: str
    sleep: Callable[[float], None]
    clock: Callable[[], float]

    def run(
        self,
        attempt: Callable[[], _T],
        on_failed_attempt: AttemptCallback | None,
        on_success: Callable[[_T, str], None] | None = None,
    ) -> _T:
        first = self.clock()
        retries = 0
        while True:
            started_at = utc_now()
            try:
                result = attempt()
            except AttemptFailed as failure:
                delay: float | None = 0.0
                if not failure.retry_now:
                    delay = self.policy.next_delay(
                        error_class=failure.error_class,
                        retries_done=retries,
                        elapsed_s=self.clock() - first,
                        retry_after_s=failure.retry_after,
                    )
                if on_failed_attempt is not None:
                    on_failed_attempt(
                        FailedAttempt(
                            error_class=failure.error_class,
                            message=failure.message,
                            usage=failure.usage,
                            request_id=failure.request_id,
                            started_at=started_at,
                            will_retry=delay is not None,
                        )
                    )
                if delay is None:
                    raise self._gave_up(failure, retries, self.clock() - first) from None
                if delay:
                    self.sleep(delay)
                retries += 1
                continue
            if on_success is not None:
                on_success(result, started_at)
            return result

    def _gave_up(self, failure: AttemptFailed, retries: int, elapsed_s: float) -> BackendError:
        retryable = failure.error_class in RETRYABLE
        attempts = f" after {retries + 1} attempts" if retries else ""
        hint = self.hints.get(failure.error_class) or (self.gave_up_hint if retryable else None)
        wait = failure.retry_after
        if retryable and wait and elapsed_s + wait > self.policy.budget_s:
            # Said as such: "retries exhausted" would be wrong after one attempt.
            hint = (
                f"the server asked to retry after {wait:g} s, past the retry budget "
                f"({self.policy.budget_s:g} s); try again later, or raise the retry budget "
                "in cache_config.json"
            )
        return BackendError(
            f"{self.service} request failed ({failure.error_class}){attempts}: {failure.message}",
            hint,
            error_class=failure.error_class,
            retryable=retryable,
        )
