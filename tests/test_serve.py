"""`foundry serve` speaks the Anthropic Messages API: the real anthropic SDK (sync, streaming,
a tool-use round trip) against the real server on 127.0.0.1 with the tiny model."""

from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

from tests.serve_helpers import READ_TOOL, SYSTEM, serving, sse_events, system_blocks

pytestmark = pytest.mark.mlx
pytest.importorskip("uvicorn")  # the serve extra: pip install -e '.[serve]'
pytest.importorskip("starlette")
TOOL_REPLY = (
    'Let me look.\n<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>'
)


def test_a_message_through_the_sdk_reports_what_was_cached(server) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "Build a todo app"}]
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-6", system=system_blocks(), messages=messages
    ).input_tokens
    first = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=8, system=system_blocks(), messages=messages
    )
    assert first.type == "message" and first.role == "assistant" and first.id.startswith("msg_")
    assert first.model == "claude-sonnet-4-6"  # the client's id is echoed back
    assert first.stop_reason in ("end_turn", "max_tokens")
    u = first.usage
    # The system prompt (up to its cache_control breakpoint) was saved to disk: a write.
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens > 100
    assert u.cache_creation.ephemeral_5m_input_tokens == u.cache_creation_input_tokens
    assert u.input_tokens + u.cache_creation_input_tokens == counted  # count_tokens is exact
    assert 1 <= u.output_tokens <= 8
    # The same conversation one turn later reads all it shares from memory.
    messages += [
        {"role": "assistant", "content": "Reading the files."},
        {"role": "user", "content": "The tests pass."},
    ]
    second = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=8, system=system_blocks(), messages=messages
    )
    v = second.usage
    assert v.cache_read_input_tokens > counted - 2 and v.input_tokens < 40
    rows = server.ledger_rows()
    assert [r["phase"] for r in rows] == ["serve", "serve"]
    assert rows[0]["cache_write_5m_tokens"] == u.cache_creation_input_tokens
    assert rows[1]["cache_read_tokens"] == v.cache_read_input_tokens
    assert rows[1]["provider_request_id"] == second.id and rows[1]["ttft_ms"] > 0


def test_the_sse_sequence_is_the_documented_one(server, script) -> None:
    script.replies.append("Hello there, this is a reply in several deltas.")
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "stream": True,
        "system": system_blocks(),
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = httpx2.post(f"{server.url}/v1/messages", json=body, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and names[-3] == "content_block_stop"
    assert set(names[2:-3]) == {"content_block_delta"} and len(names[2:-3]) >= 2
    assert events[1][0] == "ping"  # right after message_start, as the API sends it
    start = events[0][1]["message"]
    assert start["usage"]["cache_creation_input_tokens"] > 100 and start["content"] == []
    deltas = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert "".join(deltas) == "Hello there, this is a reply in several deltas."
    end = dict(events)["message_delta"]
    assert end["delta"]["stop_reason"] == "end_turn"
    assert end["usage"]["output_tokens"] >= len(deltas)
    assert (
        end["usage"]["cache_creation_input_tokens"] == start["usage"]["cache_creation_input_tokens"]
    )


def test_streaming_through_the_sdk_and_a_tool_use_round_trip(server, script) -> None:
    client = server.client()
    script.replies.append(TOOL_REPLY)
    messages: list[dict] = [{"role": "user", "content": "Show me a.py"}]
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=100,
        system=system_blocks(),
        tools=[READ_TOOL],
        messages=messages,
    ) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    text, call = message.content
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and call.name == "read_file" and call.input == {"path": "a.py"}
    assert "input_json" in kinds  # the SDK's event for input_json_delta
    assert "<tool_call>" not in "".join(k for k in kinds)  # no tag leaked as text
    # The tool result goes back, as a string and as blocks, and the conversation continues.
    messages += [
        {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in message.content],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "print('hi')"},
                {"type": "text", "text": "and now?"},
            ],
        },
    ]
    after = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=8,
        system=system_blocks(),
        tools=[READ_TOOL],
        messages=messages,
    )
    assert after.usage.cache_read_input_tokens > message.usage.cache_creation_input_tokens
    failed = messages[:-1] + [
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": [{"type": "text", "text": "no such file"}],
                    "is_error": True,
                }
            ],
        }
    ]
    again = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=8,
        system=system_blocks(),
        tools=[READ_TOOL],
        messages=failed,
    )
    assert again.stop_reason in ("end_turn", "max_tokens")


def test_a_malformed_tool_call_comes_back_as_text(server, script) -> None:
    script.replies.append('<tool_call>{"name": "read_file", "arguments": {path: a}}</tool_call>')
    message = server.client().messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        system=system_blocks(),
        tools=[READ_TOOL],
        messages=[{"role": "user", "content": "go"}],
    )
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text.startswith("<tool_call>")


def test_a_stop_sequence_ends_the_reply_before_it(server, script) -> None:
    script.replies.append("one two STOP three")
    with server.client().messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=100,
        stop_sequences=["STOP"],
        messages=[{"role": "user", "content": "count"}],
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "one two" and message.content[0].text == "one two"
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"


def test_what_claude_code_sends_is_accepted(server) -> None:
    # Claude Code 2.1's headers and body keys (DESIGN.md); the unknown ones are ignored.
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
        "context-management-2025-06-27,fine-grained-tool-streaming-2025-05-14",
        "x-app": "cli",
        "authorization": "Bearer local",
    }
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 32000,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                    {"type": "text", "text": "say hi", "cache_control": {"type": "ephemeral"}},
                ],
            }
        ],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.ffc;"},
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [READ_TOOL, {**READ_TOOL, "name": "write_file"}],
        "thinking": {"type": "adaptive"},
        "metadata": {"user_id": "user_abc"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": True,
    }
    response = httpx2.post(
        f"{server.url}/v1/messages?beta=true", json=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    usage = events[0][1]["message"]["usage"]
    # Up to the last breakpoint (the user turn) was saved: all but the generation prompt.
    assert usage["cache_creation_input_tokens"] > 100 and usage["input_tokens"] <= 10
    # Saved: the system turn and the user turn (the first system breakpoint, 20 characters
    # in, is under the 32 tokens worth a file); the billing header is no part of them.
    assert server.stats()["disk"]["entries"] == 2
    # The next request carries another billing hash, as Claude Code's do, and a system
    # message in the conversation (Claude Code 2.1.197 sends one): the prefix still hits.
    body["system"][0]["text"] = "x-anthropic-billing-header: cc_version=2.1.197.363;"
    body["messages"] += [
        {"role": "system", "content": "Available agent types: general."},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "and again"},
    ]
    again = httpx2.post(f"{server.url}/v1/messages", json={**body, "stream": False}, timeout=30)
    assert again.status_code == 200, again.text
    reused = again.json()["usage"]["cache_read_input_tokens"]
    assert reused >= usage["cache_creation_input_tokens"]
    # A top-level cache_control (automatic caching) is accepted too.
    top = {**body, "stream": False, "cache_control": {"type": "ephemeral"}}
    assert httpx2.post(f"{server.url}/v1/messages", json=top, timeout=30).status_code == 200


def test_models_health_root_and_stats(server) -> None:
    client = server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [server.service.settings.model_name]
    assert httpx2.head(f"{server.url}/").status_code == 200
    assert httpx2.get(f"{server.url}/health").json()["status"] == "ok"
    client.messages.create(
        model="claude-sonnet-4-6", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    stats = server.stats()
    assert stats["since_start"]["requests"] == 1 and stats["since_start"]["misses"] == 1
    assert stats["l1"]["entries"][0]["tokens"] > 0 and stats["l1"]["entries"][0]["bytes"] > 0
    assert {"hits", "misses", "entries", "bytes"} <= set(stats["l2"])
    assert {"kv_bytes_in_memory", "budget_bytes", "mlx_peak_bytes"} <= set(stats["memory"])
    assert stats["disk"]["entries"] == 0  # an empty system turn is not worth a file


def _error(response: httpx2.Response) -> tuple[str, str]:
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]["type"], body["error"]["message"]


def test_bad_requests_are_400s_that_name_the_problem(server) -> None:
    url = f"{server.url}/v1/messages"
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        ({"model": "claude-x", "messages": hi}, "max_tokens"),
        ({"model": "claude-x", "max_tokens": 5, "messages": []}, "messages"),
        (
            {
                "model": "claude-x",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image", "source": {"type": "base64", "data": "AA=="}},
                        ],
                    }
                ],
            },
            "messages.0.content.1: image blocks are not supported",
        ),
        (
            {
                "model": "claude-x",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            "messages.0.content.0: document blocks",
        ),
    ]
    for body, named in cases:
        response = httpx2.post(url, json=body)
        assert response.status_code == 400
        kind, message = _error(response)
        assert kind == "invalid_request_error" and named in message
    response = httpx2.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in _error(response)[1]
    with pytest.raises(anthropic.BadRequestError, match="image blocks"):
        server.client().messages.create(
            model="claude-x", max_tokens=5, messages=cases[2][0]["messages"]
        )


def test_a_prompt_over_the_window_is_the_apis_400(server) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 400  # well past 2,048 tokens
    with pytest.raises(anthropic.BadRequestError) as caught:
        server.client().messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": long}]
        )
    message = caught.value.body["error"]["message"]
    assert message.startswith("prompt is too long: ") and message.endswith(" 2047 maximum")
    (row,) = server.ledger_rows()  # refused before the model, and recorded as such
    assert (row["status"], row["error_class"], row["input_tokens"]) == (
        "error",
        "context_too_long",
        0,
    )


def test_unknown_models_and_paths_are_404s(server) -> None:
    with pytest.raises(anthropic.NotFoundError, match="gpt-4o"):
        server.client().messages.create(
            model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    response = httpx2.get(f"{server.url}/v2/nothing")
    assert response.status_code == 404 and _error(response)[0] == "not_found_error"


def test_a_body_over_the_limit_is_a_413(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path, serve={"max_request_mb": 1}) as served:
        body = {
            "model": "claude-x",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x" * 1_200_000}],
        }
        response = httpx2.post(f"{served.url}/v1/messages", content=json.dumps(body))
        assert response.status_code == 413 and _error(response)[0] == "request_too_large"


def test_an_api_key_is_required_when_set_and_never_echoed(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path, api_key="s3cret-key") as served:
        hi = [{"role": "user", "content": "hi"}]
        with pytest.raises(anthropic.AuthenticationError) as caught:
            served.client(api_key="wrong").messages.create(
                model="claude-x", max_tokens=2, messages=hi
            )
        assert "s3cret" not in str(caught.value.body) and "wrong" not in str(caught.value.body)
        assert httpx2.get(f"{served.url}/cache/stats").status_code == 401
        ok = served.client(api_key="s3cret-key").messages.create(
            model="claude-x", max_tokens=2, messages=hi
        )
        assert ok.usage.output_tokens >= 1
        bearer = httpx2.get(
            f"{served.url}/v1/models", headers={"authorization": "Bearer s3cret-key"}
        )
        assert bearer.status_code == 200
        assert httpx2.head(f"{served.url}/").status_code == 200  # health checks need no key


def test_a_model_failure_is_a_500_without_internals(server, monkeypatch) -> None:
    import foundry.local.engine as engine

    def broken(*args, **kwargs):
        raise RuntimeError("[metal::malloc] /secret/path exploded")
        yield  # a generator, like the real one

    monkeypatch.setattr(engine, "generate_tokens", broken)
    with pytest.raises(anthropic.InternalServerError) as caught:
        server.client().messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 500
    assert "secret" not in json.dumps(caught.value.body) and "Traceback" not in json.dumps(
        caught.value.body
    )
    assert server.ledger_rows()[-1]["error_class"] == "local_model_error"
