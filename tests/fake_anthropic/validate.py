"""What the fake Messages API refuses with a 400, worded as the API words it."""

from __future__ import annotations

from typing import Any

# tool_choice's variants and the fields each allows besides `type`.
TOOL_CHOICE_FIELDS = {
    "auto": {"disable_parallel_tool_use"},
    "any": {"disable_parallel_tool_use"},
    "tool": {"name", "disable_parallel_tool_use"},
    "none": set(),
}


def validate(body: Any, counting: bool) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required"
    if not counting and (not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1):
        return "max_tokens: must be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be 'user' or 'assistant'"
    if messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    return _tool_choice_problem(body)


def _tool_choice_problem(body: dict[str, Any]) -> str | None:
    """What the API says about a bad tool_choice: a tagged union, each variant with its own
    fields (none has no disable_parallel_tool_use), that needs the tools it names."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in TOOL_CHOICE_FIELDS:
        return (
            f"tool_choice: Input tag {kind!r} found using 'type' does not match any of the "
            "expected tags: 'auto', 'any', 'tool', 'none'"
        )
    for key in choice:
        if key != "type" and key not in TOOL_CHOICE_FIELDS[kind]:
            return f"tool_choice.{kind}.{key}: Extra inputs are not permitted"
    if not isinstance(choice.get("disable_parallel_tool_use", False), bool):
        return f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean"
    names = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    if kind != "none" and not names:
        return "tool_choice may only be specified while providing tools."
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            return "tool_choice.tool.name: Field required"
        if choice["name"] not in names:
            return f"tool_choice.tool.name: no tool named {choice['name']!r} in tools"
    return None
