"""When to retry a failed model request, and how long to wait. Pure: no sleeping here."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

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
