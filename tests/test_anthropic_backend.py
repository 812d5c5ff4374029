"""AnthropicBackend against the local server: breakpoints, usage, costs, cache hits."""

from __future__ import annotations

import copy
import json
import runpy
import socket
from decimal import Decimal
from pathlib import Path

import pytest

from foundry.backends.anthropic.client import AnthropicBackend
from foundry.backends.anthropic.layout import (
    build_layout,
    check_breakpoints,
    keepalive_request,
    map_usage,
)
from foundry.backends.base import Message, ModelRequest, ToolChoice, ToolSpec
from foundry.backends.registry import create_backend
from foundry.config import FoundryConfig
from foundry.errors import BackendError
from foundry.pricing import PricingTable
from tests.fake_anthropic import count_tokens

MODEL = "claude-sonnet-4-6"  # $3 in, $15 out, $3.75 5m write, $0.30 read per MTok
STATIC = "".join(
    f"Rule {i:03d}: keep every change small, tested and explained.\n" for i in range(350)
)
TOOLS = [
    ToolSpec(
        "write_file",
        "Write a file",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    ),
    ToolSpec(
        "read_file",
        "Read a file",
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    ),
]
TASK = "Build a CLI todo app with tests."


def tool_tokens(tool: ToolSpec) -> int:
    schema = json.dumps(tool.input_schema, sort_keys=True, separators=(",", ":"))
    return count_tokens(tool.name) + count_tokens(tool.description) + count_tokens(schema)


STATIC_TOKENS = sum(tool_tokens(t) for t in TOOLS) + count_tokens(STATIC)


def request(
    task: str = TASK,
    static: str = STATIC,
    tools=TOOLS,
    model: str = MODEL,
    ttl="5m",
    tool_choice: ToolChoice | None = None,
) -> ModelRequest:
    task_turn = [Message("user", [{"type": "text", "text": task}])]
    return ModelRequest(model, static, list(tools), task_turn, 1024, ttl, tool_choice=tool_choice)


def backend(server, monkeypatch, model: str = MODEL) -> AnthropicBackend:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return AnthropicBackend(FoundryConfig(), model, sleep=lambda s: None)


def tool_turn(i: int) -> list[dict]:
    return [
        {"type": "text", "text": f"Step {i}: reading the next file."},
        {"type": "tool_use", "name": "read_file", "input": {"path": f"src/mod{i}.py"}},
    ]


def content_tokens(blocks: list[dict]) -> int:
    """Text and tool_use blocks by the server's documented rule, computed independently."""
    return sum(
        count_tokens(b["text"])
        if b["type"] == "text"
        else count_tokens(b["name"]) + count_tokens(json.dumps(b["input"], separators=(",", ":")))
        for b in blocks
    )


def run_conversation(be, server, req: ModelRequest, turns: int = 10):
    """Scripted tool-use loop; returns each request's usage and expected (read, write, output)."""
    for i in range(1, turns):
        server.enqueue(tool_turn(i), "tool_use")
    server.enqueue([{"type": "text", "text": "All done: the app and its tests pass."}])
    usages, expected = [], []
    prefix = STATIC_TOKENS
    pending = count_tokens(req.messages[0].content[0]["text"]) + 3  # the task turn + overhead
    for _ in range(turns):
        response = be.complete(req)
        usages.append(response.usage)
        out = content_tokens(response.content)
        read = prefix if expected else 0
        write = pending if expected else prefix + pending
        expected.append((read, write, out))
        prefix += pending
        if response.stop_reason != "tool_use":
            break
        result = f"contents of {response.tool_uses[0]['input']['path']}: 40 lines of python"
        req.messages.append(Message("assistant", response.content))
        req.messages.append(
            Message(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": response.tool_uses[0]["id"],
                        "content": result,
                    }
                ],
            )
        )
        pending = content_tokens(response.content) + 3 + count_tokens(result) + 3
    return usages, expected


def test_ten_turn_build_reads_the_cache_and_costs_match_hand_figures(anthropic_server, monkeypatch):
    assert 4900 <= STATIC_TOKENS <= 5300  # "a ~5,000-token static prefix"
    be = backend(anthropic_server, monkeypatch)
    usages, expected = run_conversation(be, anthropic_server, request())
    assert len(usages) == 10
    for usage, (read, write, out) in zip(usages, expected, strict=True):
        assert (usage.cache_read_tokens, usage.cache_write_5m_tokens, usage.input_tokens) == (
            read,
            write,
            0,
        )
        assert usage.output_tokens == out and usage.cache_write_1h_tokens == 0
    later = usages[1:]
    assert (
        sum(u.cache_read_tokens for u in later) / sum(u.total_input_tokens for u in later) >= 0.90
    )
    for usage in later:
        assert usage.cache_read_tokens / usage.total_input_tokens >= 0.90
    table = PricingTable()
    computed = sum(Decimal(str(table.cost(u, MODEL).cost_usd)) for u in usages)
    by_hand = sum(
        (Decimal(r) * Decimal("0.30") + Decimal(w) * Decimal("3.75") + Decimal(o) * 15) / 1_000_000
        for r, w, o in expected
    )
    assert round(computed, 2) == round(by_hand, 2)
    assert abs(computed - by_hand) < Decimal("1e-9")
    uncached = sum(Decimal(str(table.cost(u, MODEL).uncached_cost_usd)) for u in usages)
    assert computed < uncached / 3


def test_a_second_build_within_the_ttl_reads_the_static_prefix(anthropic_server, monkeypatch):
    be = backend(anthropic_server, monkeypatch)
    run_conversation(be, anthropic_server, request(), turns=3)
    anthropic_server.clock.advance(200)
    fresh = backend(anthropic_server, monkeypatch)
    usage = fresh.complete(request(task="Build a markdown previewer.")).usage
    assert usage.cache_read_tokens == STATIC_TOKENS
    assert usage.cache_write_5m_tokens == count_tokens("Build a markdown previewer.") + 3
    anthropic_server.clock.advance(301)  # past the 5 minutes: gone
    assert fresh.complete(request(task="Another task")).usage.cache_read_tokens == 0


@pytest.mark.parametrize(
    ("change", "hit"),
    [
        ({"static": STATIC[:100] + "X" + STATIC[101:]}, "nothing"),
        (
            {"tools": [TOOLS[0], ToolSpec("read_file", "Read a file.", TOOLS[1].input_schema)]},
            "nothing",
        ),
        ({"model": "claude-sonnet-5"}, "nothing"),
        ({"task": "Build a JSON linter with tests."}, "static"),
        ({"tools": list(reversed(TOOLS))}, "everything"),  # the caller's tool order does not matter
        ({"tool_choice": ToolChoice("any")}, "static"),  # the API: it is part of the messages'
    ],
)
def test_what_misses_and_what_does_not(anthropic_server, monkeypatch, change, hit):
    be = backend(anthropic_server, monkeypatch)
    be.complete(request())
    usage = be.complete(request(**change)).usage
    expected = {
        "nothing": 0,
        "static": STATIC_TOKENS,
        "everything": STATIC_TOKENS + count_tokens(TASK) + 3,
    }
    assert usage.cache_read_tokens == expected[hit]


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        (ToolChoice(), {"type": "auto"}),
        (ToolChoice("any", parallel=False), {"type": "any", "disable_parallel_tool_use": True}),
        (ToolChoice("tool", "read_file"), {"type": "tool", "name": "read_file"}),
        (ToolChoice("none", parallel=False), {"type": "none"}),  # the API allows no more here
    ],
)
def test_the_tool_choice_is_sent_as_the_api_spells_it(anthropic_server, monkeypatch, choice, sent):
    be = backend(anthropic_server, monkeypatch)
    be.complete(request())
    be.complete(request(tool_choice=choice))  # the server refuses what the API would refuse
    without, chosen = anthropic_server.requests
    assert "tool_choice" not in without  # None: the body every caller sent before
    assert chosen.pop("tool_choice") == sent
    assert json.dumps(chosen) == json.dumps(without)


def test_layout_breakpoints_and_no_mutation():
    req = request()
    for i in range(3):
        req.messages += [
            Message("assistant", tool_turn(i)),
            Message("user", [{"type": "tool_result", "tool_use_id": f"t{i}", "content": "ok"}]),
        ]
    before = copy.deepcopy(req)
    layout = build_layout(req)
    assert req == before  # the caller's request is untouched
    assert [t["name"] for t in layout.tools] == ["read_file", "write_file"]
    assert layout.breakpoints == ["system[0]", "messages[6].content[0]"]
    assert layout.system[0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    assert "cache_control" not in json.dumps(build_layout(request(ttl=None)).__dict__)
    # With a 1h TTL only the static prefix is written at 1h (2x); the conversation, whose
    # turns come seconds apart, stays at 5m (1.25x), after it as the API requires.
    one_hour = build_layout(request(ttl="1h"))
    assert one_hour.system[0]["cache_control"]["ttl"] == "1h"
    assert one_hour.messages[-1]["content"][-1]["cache_control"]["ttl"] == "5m"


def test_a_wide_turn_keeps_an_extra_breakpoint_and_still_hits(anthropic_server, monkeypatch):
    be = backend(anthropic_server, monkeypatch)
    req = request()
    first = be.complete(req)
    wide = [
        {"type": "tool_use", "id": f"w{i}", "name": "read_file", "input": {"path": f"f{i}"}}
        for i in range(12)
    ]
    req.messages += [
        Message("assistant", first.content + wide),
        Message(
            "user",
            [{"type": "tool_result", "tool_use_id": f"w{i}", "content": "x"} for i in range(12)],
        ),
    ]
    layout = build_layout(req)
    assert layout.breakpoints == ["system[0]", "messages[0].content[0]", "messages[2].content[11]"]
    check_breakpoints(layout.tools, layout.system, layout.messages)
    usage = be.complete(req).usage
    assert usage.cache_read_tokens == STATIC_TOKENS + count_tokens(TASK) + 3


def test_keepalive_refreshes_static_and_conversation(anthropic_server, monkeypatch):
    be = backend(anthropic_server, monkeypatch)
    req = request()
    anthropic_server.enqueue(tool_turn(1), "tool_use")
    reply = be.complete(req)
    written = reply.usage.cache_write_5m_tokens
    anthropic_server.enqueue([{"type": "text", "text": "done"}])
    conversation = req.messages + [Message("assistant", reply.content)]
    anthropic_server.clock.advance(240)
    ping = keepalive_request(ModelRequest(MODEL, STATIC, TOOLS, conversation, 1024))
    assert ping.purpose == "keepalive" and ping.max_tokens == 1 and ping.messages[-1].role == "user"
    usage = be.complete(ping).usage
    assert (usage.cache_read_tokens, usage.cache_write_5m_tokens, usage.input_tokens) == (
        written,
        0,
        0,
    )
    assert anthropic_server.pending_replies() == 1  # the scripted reply is still there
    anthropic_server.clock.advance(240)  # 480 s since the write: alive only thanks to the ping
    assert be.complete(request()).usage.cache_read_tokens == written


def test_streaming_text_usage_mapping_and_timings(anthropic_server, monkeypatch):
    be = backend(anthropic_server, monkeypatch)
    text = "A streamed answer that arrives in several deltas, as the API sends it."
    anthropic_server.enqueue([{"type": "text", "text": text}])
    pieces: list[str] = []
    response = be.complete(request(ttl="1h"), on_text=pieces.append)
    assert "".join(pieces) == text == response.text and len(pieces) > 1
    assert response.usage.cache_write_1h_tokens == STATIC_TOKENS
    assert response.usage.cache_write_5m_tokens == count_tokens(TASK) + 3
    assert 0 < response.usage.ttft_ms <= response.usage.duration_ms
    assert response.request_id and response.started_at.endswith("Z")
    assert (
        map_usage(
            {"cache_creation_input_tokens": 10}, {"output_tokens": 3}, "1h"
        ).cache_write_1h_tokens
        == 10
    )
    split = {
        "input_tokens": 1,
        "cache_creation_input_tokens": 9,
        "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 5},
    }
    usage = map_usage(split, {"output_tokens": 7, "input_tokens": 2}, "5m")
    assert (
        usage.input_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.output_tokens,
    ) == (2, 4, 5, 7)


def test_check_needs_the_key_and_a_reachable_server(anthropic_server, monkeypatch):
    be = create_backend("anthropic", FoundryConfig(), MODEL)
    with pytest.raises(BackendError, match="ANTHROPIC_API_KEY"):
        be.check()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-123456")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{free_port}")
    with pytest.raises(BackendError, match="cannot reach") as info:
        AnthropicBackend(FoundryConfig(), MODEL).check()
    assert info.value.error_class == "connection"
    good = backend(anthropic_server, monkeypatch)
    good.check()
    assert anthropic_server.headers == []  # a TCP connect only, no HTTP request


def test_the_key_never_appears_in_errors_or_repr(anthropic_server, monkeypatch):
    secret = "sk-ant-do-not-print-7f3a9c"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    be = AnthropicBackend(FoundryConfig(), MODEL)
    with pytest.raises(BackendError) as info:
        be.complete(request())
    assert info.value.error_class == "authentication" and not info.value.retryable
    assert (
        secret not in str(info.value) and secret not in repr(info.value) and secret not in repr(be)
    )
    assert (
        info.value.__cause__ is None
        and info.value.__context__ is None
        or secret not in str(info.value.__context__)
    )


@pytest.mark.parametrize("url", ["http://127.0.0.1:notaport", "http://127.0.0.1:99999"])
def test_a_base_url_with_a_bad_port_is_a_clear_error(monkeypatch, url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    be = AnthropicBackend(FoundryConfig(), MODEL)
    assert "127.0.0.1" in repr(be)  # repr never raises
    with pytest.raises(BackendError, match="invalid Anthropic base URL") as info:
        be.check()
    assert info.value.error_class == "connection"


def test_a_key_echoed_by_the_server_is_redacted(anthropic_server, monkeypatch):
    """Errors that quote the key (a proxy echoing headers) are scrubbed before anyone sees them."""
    be = backend(anthropic_server, monkeypatch)
    key = anthropic_server.api_key
    anthropic_server.enqueue_fault("error", status=400, message=f"bad header x-api-key: {key}")
    anthropic_server.enqueue_fault("sse_error", error_type="invalid_request_error", message=key)
    for _ in range(2):  # an HTTP error, then an `error` event in the middle of a stream
        failed: list = []
        with pytest.raises(BackendError) as info:
            be.complete(request(), on_failed_attempt=failed.append)
        texts = [str(info.value), repr(info.value), info.value.message, failed[0].message]
        assert all(key not in text for text in texts) and "[redacted]" in info.value.message


# claude-opus-5-5 is a known model without a sourced price: its cost is n/a.
@pytest.mark.parametrize(("model", "last_line"), [(MODEL, "saved"), ("claude-opus-5-5", "n/a")])
def test_the_bench_runs_and_reports_cost(capsys, monkeypatch, model, last_line):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):  # the bench sets them: restore after
        monkeypatch.setenv(name, "")
    path = Path(__file__).resolve().parent.parent / "bench" / "cache_hit_bench.py"
    bench = runpy.run_path(str(path))
    assert bench["run"](2, 3, model, "5m", 20.0, 240.0) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and last_line in out.strip().splitlines()[-1]
