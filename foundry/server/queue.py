"""One model, many clients: a FIFO of requests run one at a time by a single worker thread.

State it owns: the waiting jobs (at most `max_waiting`; past it a submit is refused with a
retry-after estimate), the running job, and recent run times (for that estimate). MLX is
not async and one model holds one KV cache at a time, so requests never run concurrently.

A job talks to the asyncio side through its event queue: the worker thread posts
("plan", dict), ("text", str), ("done", response) or ("error", exception) with
call_soon_threadsafe. Cancelling a job sets its flag: a waiting job is dropped, a running
one stops at the backend's next decode step (or prefill chunk). A job is answered and recorded
once (`Job.settle`): by the worker when its run ends, or by a shutdown that stops waiting for
a step the engine cannot interrupt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
RECENT_RUNS = 20  # run times kept for the retry-after estimate
SHUTTING_DOWN = "the server is shutting down; send the request again once it is back up"


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"{waiting} requests are already waiting for the model")
        self.waiting = waiting
        self.retry_after_s = retry_after_s


class JobCancelled(Exception):
    """The job was cancelled before or while it ran (its client left, or the server stops)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Job:
    payload: Any  # what the runner needs (the service's prepared request)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    # Set with `cancel` when the server stops; a client leaving sets `cancel` only, and the
    # prompt's prefill runs to its end, so the client's retry finds it whole in memory.
    stop_prefill: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "the client disconnected"
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: bool = False  # the worker is done with it
    _settled: bool = field(default=False, repr=False)
    _settle_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def post(self, kind: str, value: Any) -> None:
        """From the worker thread: hand an event to the request's coroutine."""
        # A closed loop: the server is gone and nobody listens.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def request_cancel(self, reason: str, *, prefill_too: bool = True) -> None:
        if not self.cancel.is_set():
            self.cancel_reason = reason
            self.cancel.set()
        if prefill_too:
            self.stop_prefill.set()

    def settle(self) -> bool:
        """Claim the job's answer and ledger row: True once, for whoever asks first."""
        with self._settle_lock:
            first, self._settled = not self._settled, True
            return first


class RequestQueue:
    def __init__(self, run: Callable[[Job], None], max_waiting: int) -> None:
        self._run = run
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._recent: collections.deque[float] = collections.deque(maxlen=RECENT_RUNS)
        self.rejected = 0
        self._thread = threading.Thread(target=self._work, name="foundry-serve-worker", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def running(self) -> Job | None:
        return self._running

    @property
    def worker_alive(self) -> bool:
        """The worker thread is still there (after close: stuck inside an engine's step)."""
        return self._thread.is_alive()

    def retry_after(self, ahead: int) -> int:
        """Seconds until `ahead` jobs have likely run, from recent run times (at least 1)."""
        typical = sorted(self._recent)[len(self._recent) // 2] if self._recent else 5.0
        return max(1, math.ceil(typical * ahead))

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise JobCancelled(SHUTTING_DOWN)
            if len(self._waiting) >= self.max_waiting and self._running is not None:
                self.rejected += 1
                raise QueueFull(len(self._waiting), self.retry_after(len(self._waiting) + 1))
            self._waiting.append(job)
            self._lock.notify()

    def cancel(self, job: Job, reason: str) -> None:
        """Cancel a job (its client left): dropped while it waits; if it runs, its prefill
        goes on to the end of the prompt and the reply stops at its first step."""
        with self._lock:
            job.request_cancel(reason, prefill_too=False)
            if job in self._waiting:
                self._waiting.remove(job)
                job.post("error", JobCancelled(reason))

    def any_waiting(self, matches: Callable[[Job], bool]) -> bool:
        with self._lock:
            return any(matches(job) for job in self._waiting)

    def cancel_all(self, reason: str) -> list[Job]:
        """Shutting down: no new jobs; waiting ones end now, the running one at its next step.
        Returns the waiting jobs it ended (answered, not recorded: never run)."""
        with self._lock:
            self._closed = True
            dropped = [job for job in self._waiting if job.settle()]
            for job in dropped:
                job.request_cancel(reason)
                job.post("error", JobCancelled(reason))
            self._waiting.clear()
            if self._running is not None:
                self._running.request_cancel(reason)
            self._lock.notify_all()
            return dropped

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs; False if one still does after `timeout` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: self._running is None, timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop taking jobs and wait for the worker; False if it is still inside a job."""
        self.cancel_all(SHUTTING_DOWN)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if not self._waiting:
                    return  # closed and drained
                job = self._running = self._waiting.popleft()
            job.started = time.monotonic()
            try:
                if job.cancel.is_set():
                    job.post("error", JobCancelled(job.cancel_reason))
                else:
                    self._run(job)
            except Exception as exc:  # the runner reports its own errors; this is a bug
                log.exception("the serve worker failed on a request")
                job.post("error", exc)
            finally:
                self._recent.append(time.monotonic() - job.started)
                with self._lock:
                    job.ended = True
                    self._running = None
                    self._lock.notify_all()  # wait_idle
