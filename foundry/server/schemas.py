"""The JSON schemas a client sends, which become constrained-decoding grammars
(local/constrained.py): each tool's `input_schema`, and the structured output's
`output_config.format`, a schema the reply's text must fit. How deep they may be, and
reading the output format."""

from __future__ import annotations

from typing import Any

# A tool's input schema becomes a constrained-decoding grammar. Its construction is linear
# in the schema now (30 nested objects, 61 levels: llguidance compiles it in about 10 ms),
# but a client must not send absurd depth all the same: deeper schemas are refused. Real
# ones stay under 10 objects deep; each object is two levels here.
MAX_SCHEMA_DEPTH = 64


def output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema `output_config.format` asks for, or None; ValueError names what is wrong.
    Other `output_config` keys (effort, ...) shape Claude's behaviour and are ignored."""
    config = body.get("output_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError("output_config: must be an object")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise ValueError("output_config.format: must be an object")
    if fmt.get("type") != "json_schema":
        raise ValueError("output_config.format.type: must be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise ValueError("output_config.format.schema: must be a JSON Schema object")
    if nesting_depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValueError(
            f"output_config.format.schema: nested deeper than {MAX_SCHEMA_DEPTH} levels"
        )
    return schema


def nesting_depth(value: Any) -> int:
    """How many levels of objects and lists `value` has (iteratively: it may be deep)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest
