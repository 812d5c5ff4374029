"""The Messages API's structured output, `output_config.format`: a JSON schema the reply's
text must fit. The local engines decode it under the schema's grammar (local/constrained.py),
the same engine as tool calls."""

from __future__ import annotations

from typing import Any

# Nested deeper than this, a schema is refused: the grammar compiler walks every level, and
# no real output format needs more (the same bound as a tool's input_schema).
MAX_DEPTH = 64


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
    if _depth(schema) > MAX_DEPTH:
        raise ValueError(f"output_config.format.schema: nested deeper than {MAX_DEPTH} levels")
    return schema


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
