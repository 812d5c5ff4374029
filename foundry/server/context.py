"""The context policy for conversations longer than the model's window.

`error` (the default) answers 400 "prompt is too long: N tokens > M maximum", as Anthropic
does. `trim` drops the oldest messages after the system prompt, so the system prompt and
tools, the cached prefix, still hit: the cut falls only before a user message, a
tool_result whose tool_use was dropped goes with it (pairs stay whole), the last
`keep_last` messages are never dropped, and a note at the cut tells the model what is
missing. The cut is the earliest that fits with room for a reply; as the conversation grows
it stays where it is until it no longer fits, so later turns reuse the cached trimmed
conversation too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from foundry.backends.base import Message
from foundry.local.chat import ClientRequest
from foundry.server.protocol import ApiError

POLICIES = ("error", "trim")


@dataclass(frozen=True)
class Trimmed:
    messages: int  # messages dropped
    tokens: int  # prompt tokens dropped

    def header(self) -> str:
        return f"messages={self.messages}; tokens={self.tokens}"


def too_long(tokens: int, window: int) -> ApiError:
    return ApiError(400, f"prompt is too long: {tokens} tokens > {window - 1} maximum")


def _cut(request: ClientRequest, start: int) -> ClientRequest:
    kept = request.messages[start:]
    used = {b.get("id") for m in kept for b in m.content if b.get("type") == "tool_use"}
    first = [
        b
        for b in kept[0].content
        if not (b.get("type") == "tool_result" and b.get("tool_use_id") not in used)
    ]
    note = {
        "type": "text",
        "text": f"[{start} earlier messages were trimmed to fit the model's context window]",
    }
    messages = [Message(kept[0].role, [note, *first]), *kept[1:]]
    return replace(request, messages=messages)


def fit(
    request: ClientRequest,
    prompt_tokens: int,
    *,
    window: int,
    policy: str,
    keep_last: int,
    reply_room: int,
    count: Callable[[ClientRequest], int],
) -> tuple[ClientRequest, int, Trimmed | None]:
    """The request to run, its prompt tokens, and what was trimmed (None: nothing).
    Raises the 400 when the prompt cannot fit."""
    if prompt_tokens < window:
        return request, prompt_tokens, None
    if policy != "trim":
        raise too_long(prompt_tokens, window)
    target = window - max(1, min(reply_room, window // 4))
    last_allowed = len(request.messages) - keep_last
    cuts = [i for i in range(1, last_allowed + 1) if request.messages[i].role == "user"]
    best: tuple[ClientRequest, int, int] | None = None
    low, high = 0, len(cuts) - 1
    while low <= high:  # the earliest cut that fits: fewer tokens the later the cut
        middle = (low + high) // 2
        candidate = _cut(request, cuts[middle])
        tokens = count(candidate)
        if tokens <= target:
            best, high = (candidate, tokens, cuts[middle]), middle - 1
        else:
            low = middle + 1
    if best is None:
        raise ApiError(
            400,
            f"prompt is too long: {prompt_tokens} tokens > {window - 1} maximum, even with "
            f"all but the last {keep_last} messages trimmed",
        )
    trimmed_request, tokens, start = best
    return trimmed_request, tokens, Trimmed(start, prompt_tokens - tokens)
