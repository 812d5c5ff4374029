"""The replies a request's tools and tool_choice allow, as a grammar for constrained decoding.

The grammar is llguidance's Lark dialect with inline JSON Schemas (`%json {...}`): every tool
call in a reply names one of the request's tools and carries arguments that validate against
its input_schema, and nothing else can be sampled. It describes the model's reply only, so
the prompt (and with it the saved prefix) stays byte for byte what it was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from foundry.backends.base import ToolChoice, ToolSpec
from foundry.local.tool_calls import TAG_CLOSE, TAG_OPEN

# The spacing json.dumps writes and the packaged prompt shows: a model sees this in every
# earlier call of its conversation. No free whitespace, so it cannot pad a reply forever.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CALL_SEPARATOR = "\n"  # between two calls of one reply
NOT_BLANK = r"\S"  # a JSON Schema pattern matches anywhere in the string
# Keywords whose values are data, not schemas.
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "required"})
# Subschemas left as they are: tightening one inside `not` or an `if` condition would widen
# the whole, and inside `allOf` or `dependentSchemas` it would refuse properties that
# another part of the schema allows.
KEPT_KEYWORDS = frozenset({"not", "if", "allOf", "dependentSchemas"})


@dataclass(frozen=True)
class CallFormat:
    """How a tool call is written: the tags around a {"name": ..., "arguments": {...}} object,
    and whether a newline may sit inside them (Qwen/Hermes templates put one there)."""

    open: str
    close: str
    padded: bool = False


# foundry's own format, taught by the packaged prompt to models without native tools.
FALLBACK_FORMAT = CallFormat(TAG_OPEN, TAG_CLOSE)
# mlx-lm's "json_tools" parser: Qwen 2.5/3, Hermes and the templates that copy them.
NATIVE_JSON_FORMAT = CallFormat("<tool_call>", "</tool_call>", padded=True)


def strict_schema(schema: Any) -> Any:
    """`schema` with extra properties refused where it lists its properties and says nothing
    about others: a small model otherwise invents keys. Every value it allows, the original
    allows too."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    properties = schema.get("properties")
    named = isinstance(properties, dict)
    tightened: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DATA_KEYWORDS | KEPT_KEYWORDS:
            tightened[key] = value
        elif key == "properties" and named:
            # Its keys are names, not keywords: only the values are schemas. Walked here
            # alone: walking it as a schema too visited each level twice, 2**depth visits.
            tightened[key] = {name: strict_schema(v) for name, v in value.items()}
        else:
            tightened[key] = strict_schema(value)
    if named and "additionalProperties" not in schema and "patternProperties" not in schema:
        tightened["additionalProperties"] = False
    return tightened


def call_schema(tool: ToolSpec, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON Schema of one call of `tool`, name first as the prompt shows it; `required`
    arguments must be present and, if strings, not blank."""
    arguments = strict_schema(tool.input_schema)
    properties: dict[str, Any] = arguments.get("properties") or {}
    wanted = [name for name in required if name in properties]
    if wanted:
        arguments["required"] = sorted({*arguments.get("required", []), *wanted})
        for name in wanted:  # (a pattern of its own is kept: this one would replace it)
            if properties[name].get("type") == "string" and "pattern" not in properties[name]:
                properties[name] = {**properties[name], "pattern": NOT_BLANK}
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.name},
            "arguments": arguments,
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _regex_literal(text: str) -> str:
    """`text` as a literal inside a /.../ regex (Rust regex syntax; '/' closes the regex)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$#&\-~/])", r"\\\1", text)


def _string(text: str) -> str:
    return json.dumps(text)  # a Lark string literal has JSON's escapes


def output_grammar(schema: dict[str, Any], *, lenient: bool = False) -> str:
    """The Lark grammar of a structured output: one JSON value that fits `schema`, nothing
    before or after it (the API's output_config.format)."""
    options = {**JSON_STYLE, "lenient": True} if lenient else JSON_STYLE
    return f"%llguidance {{}}\nstart: %json {json.dumps({**schema, 'x-guidance': options})}\n"


def tool_call_grammar(
    tools: list[ToolSpec],
    choice: ToolChoice | None,
    fmt: CallFormat,
    *,
    lenient: bool = False,
) -> str:
    """The Lark grammar of every reply `choice` allows:

    auto  text with no call tag, or text then one or more calls (the text may be empty)
    any   one or more calls, nothing before them
    tool  one call of the named tool
    none  text with no call tag
    A reply ends with its last call: after it comes the next call or the end of the turn.
    `lenient` ignores schema keywords llguidance does not implement (a fallback for unusual
    client schemas; the strict grammar is always tried first).
    """
    choice = choice or ToolChoice()
    if choice.type == "tool":
        tools = [t for t in tools if t.name == choice.name]
    options = {**JSON_STYLE, "lenient": True} if lenient else JSON_STYLE
    prose = f"/(?s:.*)/ & ~/(?s:.*){_regex_literal(fmt.open)}(?s:.*)/"
    lines = ["%llguidance {}", f"PROSE: {prose}"]
    if choice.type == "none" or not tools:
        return "\n".join([*lines, "start: PROSE", ""])
    calls = [call_schema(t, choice.required if t.name == choice.name else ()) for t in tools]
    schema = {"anyOf": calls, "x-guidance": options}
    pad = f"{_string(CALL_SEPARATOR)}?" if fmt.padded else ""
    repeat = choice.parallel and choice.type != "tool"
    more = f" ({_string(CALL_SEPARATOR)} call)*" if repeat else ""
    lines += [
        f"call: {_string(fmt.open)} rest",
        f"rest: {pad} arguments {pad} {_string(fmt.close)}".replace("  ", " "),
        f"arguments: %json {json.dumps(schema)}",
    ]
    if choice.type == "auto":
        # Free text, lazily up to the first call tag, so the tag always opens a call.
        lines += [
            f"lead[lazy]: /(?s:.*){_regex_literal(fmt.open)}/",
            f"start: PROSE | lead rest{more}",
        ]
    else:
        lines.append(f"start: call{more}")
    return "\n".join([*lines, ""])
