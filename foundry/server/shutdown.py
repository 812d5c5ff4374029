"""Stopping `foundry serve` with work in flight (Ctrl-C, SIGTERM): nothing waits for long.

The queue answers the waiting requests at once (the API's 529, `overloaded_error`) and
flags the running one, which the backend stops at its next decode step or prefill chunk. A
decode step takes milliseconds, but one llama.cpp prefill chunk (512 tokens) cannot be
interrupted and takes tens of seconds with a real model on a CPU. So after GRACE_S the stop
answers and records the running request itself, and the process ends without waiting for
that step (foundry.server.run.Runner.exit_if_worker_stuck).

The stop begins in a signal handler, so its ledger rows are written on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from foundry.server.queue import Job, JobCancelled
from foundry.usage import Usage

if TYPE_CHECKING:
    from foundry.server.service import Prepared, ServeService

log = logging.getLogger("foundry.server.service")  # beside the service's other lines
GRACE_S = 1.0  # for the running request to stop at its next step


class Stop:
    def __init__(self, service: ServeService, reason: str) -> None:
        self.service = service
        self.reason = reason
        self.gave_up = False  # on the running request: the worker is inside a step
        dropped = service.queue.cancel_all(reason)  # answered now; recorded on the thread
        self.thread = threading.Thread(
            target=self._settle, args=(dropped,), name="foundry-serve-stop", daemon=True
        )
        self.thread.start()

    def wait(self) -> None:
        """Until every request in flight is answered and recorded (about GRACE_S at most)."""
        self.thread.join()

    def _settle(self, dropped: list[Job]) -> None:
        for job in dropped:  # turned away before they ran, as a request after the stop is
            self.service.reject(job.payload, "overloaded")
        queue = self.service.queue
        if queue.wait_idle(GRACE_S):
            return  # the running request stopped at its step and the worker recorded it
        running = queue.running
        if running is not None and running.settle():
            self.gave_up = True
            self._give_up(running)

    def _give_up(self, job: Job) -> None:
        """The engine is inside a step it cannot leave: the request ends here, and what that
        step computes is lost with the process."""
        prepared: Prepared = job.payload
        plan = prepared.plan or {}
        usage = Usage(
            cache_read_tokens=plan.get("cache_read", 0),
            duration_ms=(time.monotonic() - (job.started or prepared.received)) * 1000,
        )
        self.service.record_cancelled(prepared, usage)
        log.info("cancelled mid-step: %s (%s)", self.reason, prepared.request_id)
        job.post("error", JobCancelled(self.reason))
