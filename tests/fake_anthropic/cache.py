"""Prompt-cache semantics of the Anthropic Messages API, as documented, for the fake server.

The rules modelled (Anthropic prompt-caching docs; see docs/claude-backend.md):
* The prompt is one sequence of blocks: tools, then system blocks, then message blocks.
* A block with `cache_control` is a breakpoint (at most 4; a top-level `cache_control`
  puts one on the last block). 1h breakpoints must come before 5m ones.
* A breakpoint WRITES one entry: a hash of the byte-exact prefix ending at that block
  (the `cache_control` markers themselves are not part of the hash), for this model and
  this API key. Below the model's minimum cacheable length nothing is written, silently.
* tool_choice is part of the message blocks' prefix, not of tools' or system's: changing it
  (or sending it where the last request did not) misses from the first message on.
* A breakpoint READS by looking back at most 20 block positions (itself included) for an
  entry a previous response wrote; the furthest hit of all breakpoints is the read point.
* Entries become readable once the writing response has started (commit()), expire after
  their TTL on the injectable clock, and every hit refreshes the TTL.
* Usage: cache_read = tokens up to the read point; cache_creation = tokens from there to
  the last written breakpoint, split by the TTL of the breakpoint closing each segment;
  input_tokens = the rest (after the last cache hit/write point).

Token rule (deterministic, documented, exposed as count_tokens): ceil(utf8_bytes / 4) of
a text; a text block counts its text, a tool_use its name + compact JSON input, a
tool_result its content text, a tool definition its name + description + compact JSON
schema; every message adds MESSAGE_OVERHEAD tokens (counted on its first block).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOOKBACK_BLOCKS = 20
MAX_BREAKPOINTS = 4
MESSAGE_OVERHEAD = 3
DEFAULT_MIN_CACHE_TOKENS = 1024  # for models whose minimum is not documented
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


class RequestInvalid(Exception):
    """The request breaks an API rule; the server answers 400 invalid_request_error."""


def count_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 4)


def compact_json(value: Any) -> str:
    """JSON exactly as received (key order kept), without whitespace: byte-exact hashing."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _without_cache_control(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def block_tokens(block: dict[str, Any]) -> int:
    kind = block.get("type")
    if kind == "text":
        return count_tokens(block.get("text", ""))
    if kind == "tool_use":
        return count_tokens(block.get("name", "")) + count_tokens(compact_json(block.get("input")))
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return sum(block_tokens(part) for part in content)
        return count_tokens(str(content))
    return count_tokens(compact_json(_without_cache_control(block)))


def tool_tokens(tool: dict[str, Any]) -> int:
    return (
        count_tokens(tool.get("name", ""))
        + count_tokens(tool.get("description", ""))
        + count_tokens(compact_json(tool.get("input_schema", {})))
    )


@dataclass
class FlatBlock:
    where: str  # "tools[0]", "system[0]", "messages[2].content[1]"
    tokens: int
    identity: str  # what the prefix hash covers for this block
    ttl: str | None  # the breakpoint's TTL, None when not a breakpoint


def _ttl_of(marker: Any, where: str) -> str:
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        raise RequestInvalid(f"{where}.cache_control: type must be 'ephemeral'")
    ttl = marker.get("ttl", "5m")
    if ttl not in TTL_SECONDS:
        raise RequestInvalid(f"{where}.cache_control.ttl: must be '5m' or '1h', got {ttl!r}")
    return ttl


def flatten(body: dict[str, Any]) -> list[FlatBlock]:
    """The request as the API sees it for caching: tools → system → messages blocks."""
    blocks: list[FlatBlock] = []

    def add(where: str, raw: dict[str, Any], tokens: int, identity: str) -> None:
        ttl = _ttl_of(raw["cache_control"], where) if "cache_control" in raw else None
        blocks.append(FlatBlock(where, tokens, identity, ttl))

    for i, tool in enumerate(body.get("tools") or []):
        add(
            f"tools[{i}]", tool, tool_tokens(tool), "T" + compact_json(_without_cache_control(tool))
        )
    system = body.get("system")
    if isinstance(system, str):
        system = [{"type": "text", "text": system}] if system else []
    for i, block in enumerate(system or []):
        ident = "S" + compact_json(_without_cache_control(block))
        add(f"system[{i}]", block, block_tokens(block), ident)
    choice = body.get("tool_choice")
    head = "C" + compact_json(choice) if choice is not None else ""
    for m, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for b, block in enumerate(content or []):
            overhead = MESSAGE_OVERHEAD if b == 0 else 0
            # The role and message boundary are part of the prefix, not just the block bytes.
            ident = f"{head}M{message.get('role')}{'|' if b == 0 else ''}" + compact_json(
                _without_cache_control(block)
            )
            head = ""  # once, before the first message block
            add(f"messages[{m}].content[{b}]", block, block_tokens(block) + overhead, ident)
    top = body.get("cache_control")
    if top is not None and blocks and blocks[-1].ttl is None:
        blocks[-1].ttl = _ttl_of(top, "cache_control")  # automatic caching: the last block
    return blocks


@dataclass
class Entry:
    ttl: str
    expires_at: float


@dataclass
class CachePlan:
    """What one request reads and writes; writes and refreshes apply at commit()."""

    usage: dict[str, Any]
    total_tokens: int
    hits: list[str] = field(default_factory=list)  # hashes read (refreshed on commit)
    writes: list[tuple[str, str]] = field(default_factory=list)  # (hash, ttl)


class PromptCache:
    def __init__(self, clock: Callable[[], float], min_tokens: Callable[[str], int]) -> None:
        self._clock = clock
        self._min_tokens = min_tokens
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _alive(self, key: str, now: float) -> Entry | None:
        entry = self._entries.get(key)
        return entry if entry is not None and entry.expires_at > now else None

    def plan(self, body: dict[str, Any], workspace: str) -> CachePlan:
        blocks = flatten(body)
        points = [i for i, b in enumerate(blocks) if b.ttl]
        if len(points) > MAX_BREAKPOINTS:
            raise RequestInvalid(
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {len(points)}."
            )
        seen_5m = False
        for i in points:
            if blocks[i].ttl == "5m":
                seen_5m = True
            elif seen_5m:
                raise RequestInvalid(
                    f"{blocks[i].where}: a ttl='1h' cache_control block must not come after a "
                    "ttl='5m' one (tools, system, messages order)"
                )
        model = str(body.get("model", ""))
        digest = hashlib.sha256(f"{workspace}\0{model}".encode())
        hashes: list[str] = []
        cumulative: list[int] = []
        running = 0
        for block in blocks:
            digest.update(block.identity.encode("utf-8") + b"\0")
            hashes.append(digest.copy().hexdigest())
            running += block.tokens
            cumulative.append(running)
        total = running
        minimum = self._min_tokens(model)
        now = self._clock()
        plan = CachePlan(usage={}, total_tokens=total)
        read_pos = -1
        with self._lock:
            for bp in points:
                for pos in range(bp, max(bp - LOOKBACK_BLOCKS, -1), -1):
                    if self._alive(hashes[pos], now):
                        plan.hits.append(hashes[pos])
                        read_pos = max(read_pos, pos)
                        break
        written = [bp for bp in points if bp > read_pos and cumulative[bp] >= minimum]
        split = {"5m": 0, "1h": 0}
        previous = cumulative[read_pos] if read_pos >= 0 else 0
        for bp in written:
            ttl = blocks[bp].ttl
            assert ttl is not None
            split[ttl] += cumulative[bp] - previous
            previous = cumulative[bp]
            plan.writes.append((hashes[bp], ttl))
        read = cumulative[read_pos] if read_pos >= 0 else 0
        created = split["5m"] + split["1h"]
        plan.usage = {
            "input_tokens": total - read - created,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": split["5m"],
                "ephemeral_1h_input_tokens": split["1h"],
            },
        }
        return plan

    def commit(self, plan: CachePlan) -> None:
        """The response has started: its writes become readable, its hits are refreshed."""
        now = self._clock()
        with self._lock:
            for key in plan.hits:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.expires_at = max(entry.expires_at, now + TTL_SECONDS[entry.ttl])
            for key, ttl in plan.writes:
                current = self._entries.get(key)
                keep = (
                    current.ttl if current and TTL_SECONDS[current.ttl] > TTL_SECONDS[ttl] else ttl
                )
                self._entries[key] = Entry(keep, now + TTL_SECONDS[keep])
