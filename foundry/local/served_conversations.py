"""Which conversations a served model holds in memory, remembered on disk, so a restarted
server takes them back into memory before its first request: the most recent one into the
context, the others parked, as they were.

The list is a small JSON file in the prefix store's directory, one per model identity,
written by the conversation saver after its writes. It names conversations by their token
ids only: their KV comes from the store's blocks, each verified as every load is, so a
damaged or forged list can at most make a restore read verified blocks, or miss.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from foundry.fsutil import TooLarge, read_beneath, write_atomic

log = logging.getLogger(__name__)
LIST_LIMIT_BYTES = 32 * 1024 * 1024  # tokens as JSON: an 18k-token conversation is ~100 KB
VERSION = 1


def extends(longer: list[int], shorter: list[int]) -> bool:
    return len(shorter) <= len(longer) and longer[: len(shorter)] == shorter


class ServedConversations:
    """The most recent conversations (token ids, and the length of the prompt that left each
    one there), newest first, at most `keep`."""

    def __init__(self, directory: Path, digest: str, keep: int) -> None:
        self.directory = Path(directory)
        self.name = f"conversations-{digest[:16]}.json"
        self.keep = max(keep, 1)
        self._recent: list[tuple[list[int], int]] = []
        self._lock = threading.Lock()
        self._dirty = False

    def note(self, tokens: list[int], prompt_length: int) -> None:
        """`tokens` is the conversation used last. One whose whole prompt it keeps is the
        same client's earlier turn (or a retry), and is replaced by it."""
        with self._lock:
            others = [c for c in self._recent if not extends(tokens, c[0][: c[1] or len(c[0])])]
            self._recent = [(list(tokens), prompt_length), *others][: self.keep]
            self._dirty = True

    def write(self) -> None:
        """Write the list if it changed since the last write (the saver's thread calls this
        when it has nothing else to do)."""
        with self._lock:
            if not self._dirty:
                return
            listed = [{"tokens": t, "prompt_length": p} for t, p in self._recent]
            self._dirty = False
        try:
            write_atomic(
                self.directory / self.name,
                json.dumps({"version": VERSION, "conversations": listed}, separators=(",", ":")),
                mode=0o600,  # token ids are the conversations' text
            )
        except OSError as exc:  # the conversations are on disk; only the list is behind
            log.warning("could not write %s: %s", self.directory / self.name, exc)

    def read(self, n_vocab: int, n_ctx: int) -> list[tuple[list[int], int]]:
        """The remembered conversations, newest first; what is not a list of this model's
        token ids is left out, with a warning (never an error: a restore is optional)."""
        try:
            data = json.loads(read_beneath(self.directory, self.name, LIST_LIMIT_BYTES))
            listed = data["conversations"] if data.get("version") == VERSION else []
        except FileNotFoundError:
            return []
        except (OSError, TooLarge, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s unreadable (%s): no conversations restored", self.name, exc)
            return []
        found: list[tuple[list[int], int]] = []
        for entry in listed[: self.keep] if isinstance(listed, list) else []:
            tokens, prompt = _fields(entry)
            if tokens is None or not 0 < len(tokens) <= n_ctx:
                continue
            if not all(0 <= t < n_vocab for t in tokens) or not 0 <= prompt <= len(tokens):
                continue
            found.append((tokens, prompt))
        if len(found) < min(len(listed) if isinstance(listed, list) else 0, self.keep):
            log.warning("%s: entries that are not this model's conversations left out", self.name)
        with self._lock:
            self._recent = [(list(t), p) for t, p in found]
        return found


def _fields(entry: Any) -> tuple[list[int] | None, int]:
    if not isinstance(entry, dict):
        return None, 0
    tokens, prompt = entry.get("tokens"), entry.get("prompt_length")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        return None, 0
    if type(prompt) is not int:
        return None, 0
    return tokens, prompt


def take_back(
    served: ServedConversations, *, store: Any, identity: Any, engine: Any, pool: Any
) -> tuple[dict[str, Any], int]:
    """Load the remembered conversations from the store: the newest into `engine`'s context,
    the others into `pool` (parked) while its entry and byte bounds allow. What was taken
    back, and the prompt length of the conversation now in the context."""
    started = time.perf_counter()
    found = served.read(engine.n_vocab, engine.n_ctx)
    taken: list[int] = []
    in_context = 0
    per_token = engine.kv_bytes_per_token()
    for age, (tokens, prompt) in enumerate(reversed(found)):  # the oldest first
        newest = age == len(found) - 1
        if not newest and len(pool) >= pool.max_entries:
            continue
        length = int(store.stored_length(identity, tokens, len(tokens)))
        room = pool.max_bytes is None or pool.nbytes + length * per_token <= pool.max_bytes
        if not length or not (newest or room):
            continue
        lookup = store.load(identity, tokens[:length])
        if not lookup.hit:
            log.info("a remembered conversation was not taken back: %s", lookup.reason)
            continue
        if newest:
            if not engine.load_state(lookup.cache, tokens[:length]):
                continue
            in_context = min(prompt, length)
        else:
            pool.put(tokens[:length], lookup.cache, min(prompt, length))
        taken.append(length)
    summary = {
        "conversations": len(taken),
        "tokens": sum(taken),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if taken:
        log.info(
            "took back %d conversation(s), %d tokens, from the prefix store in %.2f s",
            len(taken),
            sum(taken),
            summary["seconds"],
        )
    return summary, in_context


__all__ = ["ServedConversations", "take_back"]
