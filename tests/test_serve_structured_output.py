"""Issue 22: `output_config.format` (the Messages API's structured output, which Claude Code
sends for its title request) is decoded under the schema's grammar: the tiny random model's
reply is JSON that fits the schema, every time. Through the real anthropic SDK."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import pytest

pytestmark = pytest.mark.mlx
TITLE = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        "words": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["title", "words"],
    "additionalProperties": False,
}


def _ask(server, text: str, schema, max_tokens: int = 200):
    return server.client().messages.create(
        model="claude-haiku-4-5",
        max_tokens=max_tokens,
        messages=[{"role": "user", "content": text}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )


def test_the_reply_is_json_that_fits_the_schema(server) -> None:
    for text in ("Title this: a todo app", "Title this: a calculator", "another one"):
        reply = _ask(server, text, TITLE)
        assert reply.stop_reason == "end_turn"
        (block,) = reply.content
        jsonschema.validate(json.loads(block.text), TITLE)


def test_another_schema_is_another_request(server) -> None:
    """The response cache keys on the schema: a replay never answers another format."""
    first = _ask(server, "Name it", TITLE)
    other = {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3}
    second = _ask(server, "Name it", other)
    jsonschema.validate(json.loads(first.content[0].text), TITLE)
    jsonschema.validate(json.loads(second.content[0].text), other)


@pytest.mark.parametrize(
    ("output_config", "message"),
    [
        ("json", "output_config: must be an object"),
        ({"format": {"type": "xml"}}, "output_config.format.type: must be 'json_schema'"),
        ({"format": {"type": "json_schema"}}, "output_config.format.schema: must be a JSON"),
    ],
)
def test_a_bad_output_format_is_the_apis_400(server, output_config, message) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        server.client().messages.create(
            model="claude-haiku-4-5",
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"output_config": output_config},
        )
    assert message in str(caught.value)
