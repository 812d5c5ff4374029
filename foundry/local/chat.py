"""Render a ModelRequest through a local model's chat template, and find its cacheable prefix.

The cacheable prefix is the system turn alone (static text + tool schemas),
tokenized on its own and checked to be a token prefix of the full prompt, so a saved KV
cache of it is valid for every request that shares the system turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from foundry.backends.base import Message, ModelRequest
from foundry.errors import LocalModelError
from foundry.local.tool_calls import (
    TAG_OPEN,
    ParsedReply,
    parse_tool_calls,
    render_tool_section,
    to_chat_messages,
    tools_for_template,
)
from foundry.local.tool_grammar import FALLBACK_FORMAT, NATIVE_JSON_FORMAT, CallFormat

log = logging.getLogger(__name__)
# A shorter prefix (an empty system turn) costs less to prefill than a file costs to keep.
MIN_SAVED_TOKENS = 32


@dataclass
class ClientRequest(ModelRequest):
    """A request as an API client sent it to `foundry serve`: where its cache breakpoints
    sit, and when to stop. Message blocks keep their own `cache_control` keys."""

    # Offsets in `system` where a system block with cache_control ends.
    system_breakpoints: tuple[int, ...] = ()
    stop_sequences: tuple[str, ...] = ()
    # output_config.format's JSON schema: the reply is JSON that fits it (structured output).
    output_schema: dict[str, Any] | None = None


@dataclass
class RenderedPrompt:
    tokens: list[int]  # the full prompt, ending with the assistant generation prompt
    prefix: list[int]  # the cacheable static prefix: always tokens[: len(prefix)]
    prefix_on_turn_boundary: bool
    chat: list[dict[str, Any]]  # for appending a repair turn


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def uses_native_tools(tokenizer: Any) -> bool:
    """True when mlx-lm found a tool parser for this model's chat template."""
    return bool(getattr(tokenizer, "has_tool_calling", False))


def tool_parser_name(tokenizer: Any) -> str | None:
    """The name of mlx-lm's tool parser for this template ("json_tools", "mistral", ...)."""
    try:
        kwargs = tokenizer.init_kwargs
    except AttributeError:
        return None
    return kwargs.get("tool_parser_type") if isinstance(kwargs, dict) else None


# Native formats whose calls are {"name": ..., "arguments": {...}} JSON between tags.
JSON_PARSERS = frozenset({"json_tools"})


class ChatRenderer:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise LocalModelError(
                "this model has no chat template", "use an instruct/chat model with a template"
            )
        self.native = uses_native_tools(tokenizer)
        self._warned = False

    @property
    def tool_call_tag(self) -> str:
        """The text that opens a tool call in this model's replies."""
        start = getattr(self.tokenizer, "tool_call_start", None) if self.native else None
        return start or TAG_OPEN

    @property
    def call_format(self) -> CallFormat | None:
        """How this model writes a tool call, for the grammar that constrains it; None for a
        native format foundry has no grammar for (its calls are parsed, not constrained)."""
        if not self.native:
            return FALLBACK_FORMAT
        return NATIVE_JSON_FORMAT if tool_parser_name(self.tokenizer) in JSON_PARSERS else None

    def system_text(self, request: ModelRequest) -> str:
        if self.native or not request.tools:
            return request.system
        # The packaged prompt already teaches the <tool_call> format; say it only if not.
        explain = TAG_OPEN not in request.system
        tools = render_tool_section(request.tools, explain_format=explain)
        return request.system.rstrip() + "\n\n" + tools

    def _template(self, messages: list[dict[str, Any]], request: ModelRequest, gen: bool) -> str:
        extra = (
            {"tools": tools_for_template(request.tools)} if self.native and request.tools else {}
        )
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen, **extra
            )
        except Exception as exc:  # jinja errors from the model's own template
            raise LocalModelError(
                f"the model's chat template failed: {exc}", "check the model's chat template"
            ) from None

    def encode(self, text: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = bos is None or not text.startswith(bos)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def render(self, request: ModelRequest, extra_chat: list[dict[str, Any]] | None = None):
        system = [{"role": "system", "content": self.system_text(request)}]
        chat = to_chat_messages(request.messages, native=self.native) + (extra_chat or [])
        return self.render_chat(request, system, chat)

    def render_chat(
        self, request: ModelRequest, system: list[dict[str, Any]], chat: list[dict[str, Any]]
    ) -> RenderedPrompt:
        full = self.encode(self._template(system + chat, request, gen=True))
        prefix = self._system_turn(request, system)
        if full[: len(prefix)] == prefix and len(prefix) < len(full):
            return RenderedPrompt(full, prefix, True, chat)
        # Any token prefix of the prompt has valid KV values, so the common part is still
        # safe to cache; it just may not be shared by other builds.
        shared = min(common_prefix_length(full, prefix), len(full) - 1)
        if not self._warned:
            log.warning(
                "the chat template's system turn is not a token prefix of the prompt; "
                "caching the %d shared tokens instead of %d",
                shared,
                len(prefix),
            )
            self._warned = True
        return RenderedPrompt(full, full[:shared], False, chat)

    def cache_points(self, request: ModelRequest, rendered: RenderedPrompt) -> list[int]:
        """Prompt lengths (in tokens) whose KV caches are worth saving: the system turn, and
        the prefix up to each client cache breakpoint (a system block or a message block with
        cache_control). Each is the part of the prompt that a rendering cut at the breakpoint
        shares with the full one, so it is always an exact token prefix of the prompt."""
        tokens = rendered.tokens
        points = {len(rendered.prefix)}
        system = request.system
        for offset in getattr(request, "system_breakpoints", ()):
            if offset >= len(system):
                continue  # the whole system text: the system turn, already in
            cut = [{"role": "system", "content": system[:offset]}]
            points.add(common_prefix_length(tokens, self._encode_turns(request, cut)))
        system_turn = [{"role": "system", "content": self.system_text(request)}]
        for index, message in enumerate(request.messages):
            for position, block in enumerate(message.content):
                if not block.get("cache_control"):
                    continue
                upto = [
                    *request.messages[:index],
                    Message(message.role, message.content[: position + 1]),
                ]
                chat = to_chat_messages(upto, native=self.native)
                points.add(
                    common_prefix_length(tokens, self._encode_turns(request, system_turn + chat))
                )
        return sorted(p for p in points if MIN_SAVED_TOKENS <= p < len(tokens))

    def _encode_turns(self, request: ModelRequest, turns: list[dict[str, Any]]) -> list[int]:
        try:
            return self.encode(self._template(turns, request, gen=False))
        except LocalModelError:
            return []

    def _system_turn(self, request: ModelRequest, system: list[dict[str, Any]]) -> list[int]:
        """The system turn's tokens; [] when the template cannot render it at all."""
        # Some templates (Qwen3's) refuse a conversation without a user turn; with an empty
        # one the rendering still shares the whole system turn with every prompt.
        for extra in ([], [{"role": "user", "content": ""}]):
            try:
                return self.encode(self._template(system + extra, request, gen=False))
            except LocalModelError:
                continue
        return []

    def parse(self, text: str, request: ModelRequest) -> ParsedReply:
        known = {t.name for t in request.tools} if request.tools else None
        # Qwen3-Coder's parser opens with <tool_call> too, but its body is not JSON.
        if self.call_format is not None:
            return parse_tool_calls(text, known)
        return _parse_native(self.tokenizer, text, request, known)


def _parse_native(tokenizer: Any, text: str, request: ModelRequest, known: set[str] | None):
    """Tags and parser from mlx-lm's tool parser for this template."""
    start, end = tokenizer.tool_call_start, tokenizer.tool_call_end
    reply = ParsedReply(text="")
    kept: list[str] = []
    rest = text
    tools = tools_for_template(request.tools)
    while start in rest:
        head, _, tail = rest.partition(start)
        body, closed, rest = tail.partition(end)
        kept.append(head)
        try:
            parsed = tokenizer.tool_parser(body, tools)
            items = parsed if isinstance(parsed, list) else [parsed]
            for item in items:
                arguments = item.get("arguments", {})
                if known is not None and item["name"] not in known:
                    raise ValueError(f"unknown tool '{item['name']}'")
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be an object")
                reply.calls.append({"name": item["name"], "input": arguments})
        except Exception as exc:  # each parser fails in its own way
            reply.errors.append(f"could not parse a tool call: {exc}")
            kept.append(start + body + (end if closed else ""))
    kept.append(rest)
    reply.text = "".join(kept).strip()
    return reply
