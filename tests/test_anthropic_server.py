"""The local Anthropic server against the real SDK and the documented caching rules."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import anthropic
import httpx2
import pytest

from tests.fake_anthropic import FakeAnthropic, count_tokens

MODEL = "claude-sonnet-4-6"  # minimum cacheable prefix: 1024 tokens
SYSTEM = ("You are a careful build agent. " * 140)[:4200]  # 4200 bytes = 1050 tokens


def client(server: FakeAnthropic, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=server.api_key, base_url=server.base_url, max_retries=0, **kw
    )


def cc(ttl: str = "5m") -> dict:
    return {"type": "ephemeral", "ttl": ttl}


def cached_system(user: str = "abcd", system: str = SYSTEM) -> dict:
    """A body whose system block is a 5m breakpoint, then one user turn (no breakpoint)."""
    return {
        "system": [{"type": "text", "text": system, "cache_control": cc()}],
        "messages": [{"role": "user", "content": user}],
    }


def block(i: int) -> dict:
    return {"type": "text", "text": f"block {i:02d} " * 20}  # 180 bytes = 45 tokens


def body_with_blocks(n: int, breakpoints: set[int], changed: int | None = None) -> dict:
    """System (no breakpoint) + one user message with blocks 1..n (1-based, as in the docs)."""
    blocks = []
    for i in range(1, n + 1):
        b = block(i) if i != changed else {"type": "text", "text": "changed " * 22}
        if i in breakpoints:
            b["cache_control"] = cc()
        blocks.append(b)
    return {"system": SYSTEM, "messages": [{"role": "user", "content": blocks}]}


def send(c: anthropic.Anthropic, body: dict, model: str = MODEL, **kw):
    return c.messages.create(model=model, max_tokens=50, **body, **kw).usage


def test_token_rule_is_the_documented_one():
    assert count_tokens("") == 0
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("é" * 4) == 2  # bytes, not characters


def test_auth_headers_are_checked(anthropic_server):
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(
            api_key="wrong", base_url=anthropic_server.base_url, max_retries=0
        ).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "authentication_error"
    payload = json.dumps(
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    url = anthropic_server.base_url + "/v1/messages"
    ok = urllib.request.Request(
        url,
        payload.encode(),
        {"x-api-key": anthropic_server.api_key, "anthropic-version": "2023-06-01"},
    )
    reply = json.loads(urllib.request.urlopen(ok).read())
    assert reply["content"] == [{"type": "text", "text": "OK"}]
    no_version = urllib.request.Request(
        url, payload.encode(), {"x-api-key": anthropic_server.api_key}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(no_version)
    assert err.value.code == 400


def test_scripted_replies_stream_like_the_api(anthropic_server):
    anthropic_server.enqueue(
        [
            {"type": "text", "text": "Let me look at the file first."},
            {"type": "tool_use", "name": "read_file", "input": {"path": "app.py", "limit": 10}},
        ],
        stop_reason="tool_use",
    )
    c = client(anthropic_server)
    with c.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "go"}]
    ) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert final.content[0].text == "Let me look at the file first."
    assert final.content[1].input == {"path": "app.py", "limit": 10}
    assert final.content[1].id.startswith("toolu_")  # filled in by the server
    assert final.stop_reason == "tool_use"
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "input_json" in events and "text" in events


def test_responder_then_default_reply_and_count_tokens(anthropic_server):
    seen = []
    anthropic_server.responder = lambda body: (
        seen.append(body) or [{"type": "text", "text": "hi"}],
        "end_turn",
    )
    c = client(anthropic_server)
    msg = c.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert msg.content[0].text == "hi" and seen[0]["messages"][0]["content"] == "x"
    count = c.messages.count_tokens(
        model=MODEL, system=SYSTEM, messages=[{"role": "user", "content": "abcd"}]
    )
    assert count.input_tokens == 1050 + 1 + 3  # system + text + message overhead


def test_keepalive_sized_requests_do_not_take_scripted_replies(anthropic_server):
    anthropic_server.enqueue([{"type": "text", "text": "the real answer"}])
    c = client(anthropic_server)
    c.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "ping"}])
    assert anthropic_server.pending_replies() == 1


def test_write_then_read_with_exact_usage_fields(anthropic_server):
    c = client(anthropic_server)
    body = cached_system("abcdefgh")
    first = send(c, body)
    assert (
        first.input_tokens,
        first.cache_creation_input_tokens,
        first.cache_read_input_tokens,
    ) == (5, 1050, 0)
    assert first.cache_creation.ephemeral_5m_input_tokens == 1050
    second = send(c, body)
    assert (
        second.input_tokens,
        second.cache_creation_input_tokens,
        second.cache_read_input_tokens,
    ) == (5, 0, 1050)
    assert anthropic_server.responses_usage[1]["cache_read_input_tokens"] == 1050


def test_below_the_minimum_nothing_is_cached_silently(anthropic_server):
    c = client(anthropic_server)
    short = cached_system(system="x" * 4000)
    for _ in range(2):
        usage = send(c, short)
        assert (
            usage.input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
        ) == (1004, 0, 0)
    # Opus 4.6's minimum is 4096: the 1050-token prefix that caches on Sonnet does not.
    usage = send(c, cached_system(), model="claude-opus-4-6")
    assert usage.cache_creation_input_tokens == 0
    # A model the pricing table does not know uses 1024.
    usage = send(c, cached_system(), model="claude-unknown-9")
    assert usage.cache_creation_input_tokens == 1050


def test_docs_lookback_example(anthropic_server):
    """Docs: a write at block 30 is found from a breakpoint up to 20 blocks later, not further."""
    c = client(anthropic_server)
    prefix_30 = 1050 + 3 + 30 * 45
    assert send(c, body_with_blocks(30, {30})).cache_creation_input_tokens == prefix_30
    hit = send(c, body_with_blocks(31, {31}))  # "send block 31 with no changes" → hit at 30
    assert hit.cache_read_input_tokens == prefix_30 and hit.cache_creation_input_tokens == 45
    anthropic_server.cache.clear()
    send(c, body_with_blocks(30, {30}))
    assert send(c, body_with_blocks(49, {49})).cache_read_input_tokens == prefix_30  # 20th position
    anthropic_server.cache.clear()
    send(c, body_with_blocks(30, {30}))
    assert send(c, body_with_blocks(50, {50})).cache_read_input_tokens == 0  # 21 positions back
    anthropic_server.cache.clear()
    send(c, body_with_blocks(30, {30}))
    assert (
        send(c, body_with_blocks(50, {30, 50})).cache_read_input_tokens == prefix_30
    )  # extra breakpoint


def test_a_change_inside_the_prefix_misses_back_to_an_earlier_breakpoint(anthropic_server):
    c = client(anthropic_server)
    send(c, body_with_blocks(30, {30}))
    assert send(c, body_with_blocks(31, {31}, changed=25)).cache_read_input_tokens == 0
    anthropic_server.cache.clear()
    send(c, body_with_blocks(30, {20, 30}))  # an explicit breakpoint on block 20 wrote there too
    usage = send(c, body_with_blocks(31, {20, 31}, changed=25))
    assert usage.cache_read_input_tokens == 1050 + 3 + 20 * 45


def test_ttl_expiry_refresh_and_the_1h_split(anthropic_server):
    c = client(anthropic_server)
    body = cached_system()
    send(c, body)
    for _ in range(3):  # each hit restarts the 5 minutes
        anthropic_server.clock.advance(290)
        assert send(c, body).cache_read_input_tokens == 1050
    anthropic_server.clock.advance(301)
    assert send(c, body).cache_read_input_tokens == 0
    anthropic_server.cache.clear()
    mixed = {
        "system": [{"type": "text", "text": SYSTEM, "cache_control": cc("1h")}],
        "messages": [{"role": "user", "content": [dict(block(1), cache_control=cc("5m"))]}],
    }
    usage = send(c, mixed)
    assert usage.cache_creation.ephemeral_1h_input_tokens == 1050
    assert usage.cache_creation.ephemeral_5m_input_tokens == 48
    anthropic_server.clock.advance(3000)  # the 5m entry is gone, the 1h one is not
    usage = send(c, mixed)
    assert usage.cache_read_input_tokens == 1050 and usage.cache_creation_input_tokens == 48


def test_breakpoint_rules_are_enforced(anthropic_server):
    c = client(anthropic_server)
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4"):
        send(c, body_with_blocks(5, {1, 2, 3, 4, 5}))
    wrong_order = {
        "system": [{"type": "text", "text": SYSTEM, "cache_control": cc("5m")}],
        "messages": [{"role": "user", "content": [dict(block(1), cache_control=cc("1h"))]}],
    }
    with pytest.raises(anthropic.BadRequestError, match="1h"):
        send(c, wrong_order)


READ = {"name": "read_file", "description": "Read a file", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("tool_choice", "tools", "error"),
    [
        ({"type": "sometimes"}, [READ], "tool_choice: Input tag 'sometimes'"),
        ({"type": "none", "disable_parallel_tool_use": True}, [READ], "Extra inputs"),
        ({"type": "auto", "disable_parallel_tool_use": "yes"}, [READ], "valid boolean"),
        ({"type": "tool"}, [READ], "tool_choice.tool.name: Field required"),
        ({"type": "tool", "name": "rm"}, [READ], "no tool named 'rm'"),
        ({"type": "any"}, [], "only be specified while providing tools"),
    ],
)
def test_a_bad_tool_choice_is_refused_as_the_api_refuses_it(
    anthropic_server, tool_choice, tools, error
):
    c = client(anthropic_server)
    with pytest.raises(anthropic.BadRequestError, match=error):
        send(c, {**cached_system(), "tools": tools}, tool_choice=tool_choice)
    assert anthropic_server.requests == []
    ok = {"type": "tool", "name": "read_file", "disable_parallel_tool_use": True}
    send(c, {**cached_system(), "tools": [READ]}, tool_choice=ok)
    assert anthropic_server.requests[0]["tool_choice"] == ok


def test_prefix_is_per_model_and_byte_exact(anthropic_server):
    c = client(anthropic_server)
    body = cached_system()
    send(c, body)
    assert send(c, body, model="claude-sonnet-5").cache_read_input_tokens == 0
    one_char = cached_system(system=SYSTEM[:-1] + "!")
    assert send(c, one_char).cache_read_input_tokens == 0
    assert send(c, body).cache_read_input_tokens == 1050
    automatic = {
        "system": SYSTEM,
        "messages": [{"role": "user", "content": "abcd"}],
        "cache_control": cc(),
    }
    send(c, automatic)
    assert send(c, automatic).cache_read_input_tokens == 1050 + 4  # top-level: the last block


def test_entries_are_readable_only_once_the_writing_response_started(anthropic_server):
    c = client(anthropic_server)
    body = cached_system()
    anthropic_server.enqueue_fault("slow", delay_s=0.6)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", send(c, body)))
    first.start()
    time.sleep(0.2)  # the first request is in flight, its response not started
    results["parallel"] = send(c, body)
    first.join()
    assert results["parallel"].cache_read_input_tokens == 0
    assert results["first"].cache_read_input_tokens == 0
    assert send(c, body).cache_read_input_tokens == 1050


@pytest.mark.parametrize(
    ("kind", "options", "error"),
    [
        ("rate_limit", {"retry_after": 7}, anthropic.RateLimitError),
        ("overloaded", {}, anthropic.OverloadedError),
        ("server_error", {}, anthropic.InternalServerError),
        ("drop", {}, anthropic.APIConnectionError),
    ],
)
def test_http_faults(anthropic_server, kind, options, error):
    anthropic_server.enqueue_fault(kind, **options)
    with pytest.raises(error) as info:
        client(anthropic_server).messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    if kind == "rate_limit":
        assert info.value.response.headers["retry-after"] == "7"


def test_stream_faults_and_slow_responses(anthropic_server):
    c = client(anthropic_server)
    anthropic_server.enqueue([{"type": "text", "text": "a reply long enough to stream in pieces"}])
    anthropic_server.enqueue_fault("stream_cut")
    seen = []
    # SDK 2.17 wraps the cut stream in APIConnectionError; earlier ones let httpx2's through.
    with pytest.raises((httpx2.HTTPError, anthropic.APIConnectionError)):
        for event in c.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            seen.append(event.type)
    assert seen[0] == "message_start" and "message_stop" not in seen
    anthropic_server.enqueue_fault("sse_error")
    with pytest.raises(anthropic.APIStatusError) as info:
        list(
            c.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert info.value.type == "overloaded_error"
    assert anthropic_server.pending_replies() == 1  # cut attempts leave the reply for the retry
    anthropic_server.enqueue_fault("slow", delay_s=1.0)
    with pytest.raises(anthropic.APITimeoutError):
        client(anthropic_server, timeout=0.2).messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
