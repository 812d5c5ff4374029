"""Saving served conversations to the prefix store in the background, so a restarted server
finds them there: after each request, the conversation is handed over here, and its state
is copied out of the model (while no request runs) and its new blocks written, off the
path of the reply.

One writer thread, a short queue (when it falls behind, the oldest waiting state is dropped:
a later state of the same conversation holds all of it, and a parked one was handed over
when its own request ended), and a flush at exit, so a server stopped by Ctrl-C or SIGTERM
leaves what it was writing on disk, whole.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from foundry.local.served_conversations import ServedConversations

log = logging.getLogger(__name__)
WAITING_MAX = 2
SAVER_NICENESS = 19
IDLE_WAIT_S = 1.0  # how long a copy waits for a running request before leaving it be


class ConversationSaver:
    def __init__(
        self, save: Callable[[Any, Any], int], when_idle: Callable[[], None] | None = None
    ) -> None:
        self._save = save
        self._when_idle = when_idle  # run when the queue is empty (before a flush returns)
        self._poked = False
        self._waiting: deque[tuple[Any, Any]] = deque(maxlen=WAITING_MAX)
        self._wake = threading.Condition()
        self._busy = False
        self._closed = False
        self.saved_bytes = 0
        self._thread = threading.Thread(target=self._work, name="conversation-saver", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def submit(self, what: Any, state: Any) -> None:
        """Queue `save(what, state)`: `what` says which tokens `state` holds. A callable
        `state` is called on the writer thread for the state (None: nothing to save)."""
        with self._wake:
            if self._closed:
                return
            self._waiting.append((what, state))
            self._wake.notify_all()

    def poke(self) -> None:
        """Run `when_idle` soon, with nothing to save."""
        with self._wake:
            self._poked = True
            self._wake.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over is written; False if `timeout` passed first."""
        with self._wake:
            return self._wake.wait_for(
                lambda: not self._waiting and not self._busy and not self._poked, timeout
            )

    def close(self) -> None:
        """Write what is waiting, then stop the thread."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._thread.join()
        atexit.unregister(self.close)

    def _work(self) -> None:
        # Below the model's threads: on a 2-core machine a save beside a running request
        # doubled a 25-token side request's time to first token (bench/claude_code_bench.py).
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread's own niceness
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SAVER_NICENESS)
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._waiting or self._poked or self._closed)
                if not self._waiting and not self._poked:
                    return  # closed, and nothing left to write
                job = self._waiting.popleft() if self._waiting else None
                self._poked = False
                self._busy = True
            try:
                if job is not None:
                    what, state = job
                    state = state() if callable(state) else state
                    if state is not None:
                        self.saved_bytes += int(self._save(what, state))
                if self._when_idle is not None and not self._waiting:
                    self._when_idle()
            except Exception:  # a save is optional: the conversation is still in memory
                log.exception("could not save a conversation")
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()


class ConversationKeeper:
    """`foundry serve`'s conversations on disk: which ones to save, and when. It holds the
    lock a request holds while it runs the model, so a state is copied out only between
    requests (tens of ms per 100 MB, off the reply's path)."""

    def __init__(
        self, store: Callable[[], Any], identity: Any, served: ServedConversations | None = None
    ) -> None:
        self._store = store  # the backend's store as it is now (a server may wrap it)
        self._identity = identity
        self.served = served  # which conversations a restarted server takes back
        self.lock = threading.Lock()
        self._saver: ConversationSaver | None = None

    def _stored(self, tokens: list[int]) -> bool:
        return bool(self._store().has(self._identity, tokens))

    def _saver_started(self) -> ConversationSaver:
        if self._saver is None:
            self._saver = ConversationSaver(
                self._save, self.served.write if self.served is not None else None
            )
        return self._saver

    def _save(self, held: tuple[list[int], tuple[int, ...]], state: Any) -> int:
        tokens, prefixes = held
        return int(self._store().save(self._identity, tokens, state, prefixes=prefixes))

    def _remember(self, tokens: list[int], prompt_length: int) -> None:
        if self.served is not None:
            self.served.note(tokens, prompt_length)
            self._saver_started().poke()

    def after_request(
        self, engine: Callable[[], Any], prompt_length: int, points: tuple[int, ...] = ()
    ) -> None:
        """A request ended: the conversation the context holds is saved once the lock is
        free, with the tail of its prompt and of each cache point in `points` (the prompt's
        breakpoints, saved here rather than in the middle of its prefill); not when the next
        request took the context first (its own end saves what it holds; a conversation it
        parks is saved from its parked copy)."""
        held = engine()
        tokens = list(held.tokens) if held is not None else []
        if not tokens:
            return
        self._remember(tokens, prompt_length)
        prefixes = tuple(p for p in (*points, prompt_length) if 0 < p <= len(tokens))
        if all(self._stored(tokens[:p]) for p in (*prefixes, len(tokens))):
            return

        def copy() -> Any:
            if not self.lock.acquire(timeout=IDLE_WAIT_S):
                return None
            try:
                now = engine()
                return now.save_state() if now is not None and now.tokens == tokens else None
            finally:
                self.lock.release()

        self._saver_started().submit((tokens, prefixes), copy)

    def parked(self, tokens: list[int], state: Any, prompt_length: int) -> None:
        """A conversation set aside in memory: saved from that copy, unless it is on disk."""
        if not self._stored(tokens):
            self._saver_started().submit((tokens, (prompt_length,)), state)

    def flush(self, timeout: float) -> bool:
        return self._saver is None or self._saver.flush(timeout)

    def close(self) -> None:
        if self._saver is not None:
            self._saver.close()  # what it was writing lands whole
