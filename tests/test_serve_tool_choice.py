"""`foundry serve` honours the API's `tool_choice`: checked as the API checks it (a 400 that
names the problem), handed to the backend on the request, part of what the response cache
keys on, with the API's stop_reason. The real anthropic SDK against the real server; what
the model may emit under a choice is the backend's grammar, tested with the backend."""

from __future__ import annotations

import anthropic
import httpx2
import pytest

from foundry.backends.base import ToolChoice
from tests.serve_helpers import READ_TOOL, sse_events, system_blocks

pytestmark = pytest.mark.mlx
pytest.importorskip("uvicorn")  # the serve extra: pip install -e '.[serve]'
pytest.importorskip("starlette")
CALL = '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>'
HI = [{"role": "user", "content": "Show me a.py"}]
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search"}  # a server tool: ignored


@pytest.fixture
def choices(server, monkeypatch) -> list[ToolChoice | None]:
    """The tool_choice of every request the backend is asked to complete."""
    seen: list[ToolChoice | None] = []
    complete = server.backend.complete

    def recording(request, **kwargs):
        seen.append(request.tool_choice)
        return complete(request, **kwargs)

    monkeypatch.setattr(server.backend, "complete", recording)
    return seen


@pytest.mark.parametrize(
    ("tools", "tool_choice", "named"),
    [
        ([READ_TOOL], {"type": "sometimes"}, "tool_choice.type: must be one of 'auto', 'any',"),
        ([READ_TOOL], "auto", "tool_choice: must be an object"),
        ([READ_TOOL], {"type": "tool"}, "tool_choice.name: is required with type 'tool'"),
        (
            [READ_TOOL],
            {"type": "tool", "name": "write_file"},
            "tool_choice.name: 'write_file' is not one of this request's tools; use one of "
            "read_file",
        ),
        (None, {"type": "any"}, "tool_choice: type 'any' requires tools"),
        (None, {"type": "tool", "name": "read_file"}, "tool_choice: type 'tool' requires tools"),
        ([WEB_SEARCH], {"type": "tool", "name": "web_search"}, "none the model can call"),
        (
            [READ_TOOL],
            {"type": "any", "disable_parallel_tool_use": "yes"},
            "tool_choice.disable_parallel_tool_use: must be true or false",
        ),
    ],
)
def test_a_bad_tool_choice_is_a_400_that_names_it(server, choices, tools, tool_choice, named):
    client = server.client()
    extra = {"tools": tools} if tools else {}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=8,
            messages=HI,
            tool_choice=tool_choice,
            **extra,
        )
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error" and named in error["message"]
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):  # counted the same way
        client.messages.count_tokens(
            model="claude-sonnet-4-6", messages=HI, tool_choice=tool_choice, **extra
        )
    assert choices == [] and server.ledger_rows() == []  # refused before the model


def test_a_forced_tool_reaches_the_backend_and_the_reply_stops_on_tool_use(
    server, script, choices
) -> None:
    script.replies += [CALL, CALL]
    message = server.client().messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        system=system_blocks(),
        tools=[READ_TOOL],
        tool_choice={"type": "tool", "name": "read_file"},
        messages=HI,
    )
    assert choices == [ToolChoice("tool", "read_file")]
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in message.content] == [
        ("tool_use", "read_file", {"path": "a.py"})
    ]
    # Streamed, with "any" and one call at most: the same request shape, the same stop.
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "stream": True,
        "tools": [READ_TOOL],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": HI,
    }
    response = httpx2.post(f"{server.url}/v1/messages", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert choices[1] == ToolChoice("any", parallel=False)
    end = dict(sse_events(response.text))["message_delta"]
    assert end["delta"]["stop_reason"] == "tool_use"


def test_auto_and_none_need_no_tools_and_absent_means_the_default(server, choices) -> None:
    client = server.client()
    for tool_choice in ({"type": "auto"}, {"type": "none"}):
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=2, messages=HI, tool_choice=tool_choice
        )
        assert reply.stop_reason in ("end_turn", "max_tokens")
    client.messages.create(model="claude-sonnet-4-6", max_tokens=2, messages=HI)
    assert choices == [ToolChoice("auto"), ToolChoice("none"), None]


def test_the_response_cache_keys_on_the_tool_choice(server, choices) -> None:
    url = f"{server.url}/v1/messages"
    body = {"model": "claude-sonnet-4-6", "max_tokens": 3, "tools": [READ_TOOL], "messages": HI}
    for tool_choice in ({"type": "auto"}, {"type": "none"}):
        first = httpx2.post(url, json={**body, "tool_choice": tool_choice}, timeout=60)
        again = httpx2.post(url, json={**body, "tool_choice": tool_choice}, timeout=60)
        assert "x-foundry-cache" not in first.headers  # another choice: not the other's reply
        assert again.headers["x-foundry-cache"] == "response"
    assert choices == [ToolChoice("auto"), ToolChoice("none")]  # replays never ran the model
