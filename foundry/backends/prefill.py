"""Prefill progress: the local backends count a request's prefill across its parts and tell
the request's listener (ModelRequest.on_prefill) between chunks.

A cold prefill of a long static prefix takes minutes on a CPU (164 s for a first build),
and it happens once: the prefix is saved and later requests read it. Saying so, with the
tokens done, the rate and the time left (foundry.orchestrator.display words it), is what
keeps the wait from looking like a hang.
"""

from __future__ import annotations

import time

from foundry.backends.base import PrefillCallback, PrefillProgress


class PrefillMeter:
    """One request's prefill: the prefix up to each cache point, then the new tokens.

    `advance(n)` is called once per chunk (512 tokens), never per decoded token, so what it
    costs (a clock read and the listener's call) is nothing next to the chunk's forward pass.
    """

    def __init__(self, listener: PrefillCallback, total: int, saving_until: int) -> None:
        self.listener = listener
        self.total = total
        # Tokens up to here (counted from the first one prefilled) are a prefix that is
        # being saved: the part of this wait that happens once.
        self.saving_until = saving_until
        self.done = 0
        self.started = time.perf_counter()
        self._tell()

    def advance(self, count: int) -> None:
        if count <= 0:
            return
        self.done = min(self.done + count, self.total)
        self._tell()

    def _tell(self) -> None:
        saving = self.done <= self.saving_until and self.saving_until > 0
        elapsed = time.perf_counter() - self.started
        self.listener(PrefillProgress(self.done, self.total, elapsed, saving))
