"""The response cache (L2): a greedy (temperature 0) reply, recorded once and replayed for a
request identical in everything that decides the output, without running the model.

State it owns: recorded replies by key (an LRU), their sizes, and hit/miss counts. Bounded
by entries, bytes and age (an entry older than the TTL is a miss and is dropped).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecordedReply:
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None
    input_tokens: int  # the prompt's length, all of it "read from the cache" on a replay
    output_tokens: int
    duration_ms: float  # what generating it took: what a replay saves
    text_deltas: list[str] = field(default_factory=list)
    trimmed: str | None = None  # what the context policy trimmed, as the header said
    created: float = 0.0
    nbytes: int = 0
    hits: int = 0


class ResponseCache:
    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, RecordedReply] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.stores = self.evictions = 0
        self.saved_ms = 0.0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def get(self, key: str) -> RecordedReply | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._clock() - entry.created > self.ttl_s:
                del self._entries[key]
                self.evictions += 1
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            entry.hits += 1
            self.hits += 1
            self.saved_ms += entry.duration_ms
            return entry

    def put(self, key: str, reply: RecordedReply) -> bool:
        """Record a reply; False when it alone is over the byte bound (not kept)."""
        size = len(json.dumps([reply.content, reply.text_deltas]).encode())
        if size > self.max_bytes:
            return False
        reply.created, reply.nbytes = self._clock(), size
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = reply
            self.stores += 1
            while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)
                self.evictions += 1
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "enabled": True,
                "entries": len(self._entries),
                "bytes": self.nbytes,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
                "ttl_s": self.ttl_s,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else None,
                "stores": self.stores,
                "evictions": self.evictions,
                "generation_ms_saved": round(self.saved_ms, 1),
            }
