"""A whole chat.completion for a streaming request: a proxy (LiteLLM) relays an origin's JSON
reply under `content-type: text/event-stream`, or under application/json. The SSE decoder
finds no chunks in it; foundry used to retry it as stream_interrupted and lose the usage
the origin billed. The body is the reply: it is taken, with its usage, once. Real `openai`
SDK, real HTTP, the local OpenAI-compatible server."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest

from foundry.backends.base import FailedAttempt, Message, ModelRequest
from foundry.backends.openai.stream import StreamState
from foundry.backends.streams import MalformedStream
from foundry.orchestrator.tools import tool_specs
from tests.fake_openai import FakeOpenAI
from tests.orchestrator_helpers import write_template
from tests.test_openai_faults import MODEL, make

WHOLE = "a whole completion, relabelled by the proxy"
SYSTEM = "You orchestrate builds. Follow the rules below exactly.\n" * 40


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def request(text: str = "go") -> ModelRequest:
    return ModelRequest(
        MODEL, SYSTEM, tool_specs(), [Message("user", [{"type": "text", "text": text}])], 64
    )


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("json_as_sse", {}),
        ("json_as_sse", {"chunk": 7, "lead": "\n  \r\n"}),  # split mid-token, after blanks
        ("json_as_sse", {"gzip": True}),  # the SDK asks for gzip; the sniff reads it decoded
        ("json_as_sse", {"gzip": True, "chunk": 5}),
        ("json_for_stream", {}),
        ("json_for_stream", {"chunk": 3}),
    ],
)
def test_a_whole_completion_for_a_stream_is_the_reply_with_its_usage(server, kind, options):
    be, fake = make(server)
    be.complete(request())  # an earlier prompt, so the next one reads part of it cached
    server.enqueue(WHOLE)
    server.enqueue_fault(kind, **options)
    failed: list[FailedAttempt] = []
    texts: list[str] = []
    response = be.complete(request(), on_text=texts.append, on_failed_attempt=failed.append)
    assert failed == [] and fake.sleeps == [] and len(server.requests) == 2
    assert response.text == WHOLE and texts == [WHOLE]
    assert response.stop_reason == "end_turn" and response.request_id.startswith("req-fake-")
    sent = server.usages[-1]
    cached = sent["prompt_tokens_details"]["cached_tokens"]
    assert response.usage.cache_read_tokens == cached > 0
    assert response.usage.input_tokens == sent["prompt_tokens"] - cached
    assert response.usage.output_tokens == sent["completion_tokens"] > 0
    # Arriving at once, it says nothing of how fast the server generates.
    assert response.usage.generation_tokens_per_s is None


def test_tool_calls_in_a_whole_completion_are_the_calls(server):
    be, _ = make(server)
    server.enqueue("Reading both.", [("read_file", {"path": "a.py"}), ("list_files", {})])
    server.enqueue_fault("json_as_sse", chunk=11)
    response = be.complete(request())
    assert len(server.requests) == 1 and response.stop_reason == "tool_use"
    calls = [(c["name"], c["input"]) for c in response.tool_uses]
    assert calls == [("read_file", {"path": "a.py"}), ("list_files", {})]
    assert all(c["id"].startswith("call_") for c in response.tool_uses)
    assert response.text == "Reading both."


def test_llama_cpp_timings_in_a_whole_completion_count():
    with FakeOpenAI(report_cache="timings") as server:
        be, _ = make(server)
        be.complete(request())
        server.enqueue_fault("json_as_sse")
        failed: list[FailedAttempt] = []
        response = be.complete(request(), on_failed_attempt=failed.append)
    assert failed == [] and len(server.requests) == 2
    timings = server.usages[-1]["timings"]
    assert response.usage.cache_read_tokens == timings["cache_n"] > 0
    assert response.usage.input_tokens == timings["prompt_n"]
    assert response.usage.generation_tokens_per_s == timings["predicted_per_second"]


def test_a_real_stream_after_the_sniff_is_still_a_stream(server):
    """The first bytes read to tell JSON from SSE reach the SDK's decoder all the same,
    keep-alive comments before the first chunk included."""
    be, _ = make(server)
    server.enqueue("streamed in the ordinary way")
    server.enqueue_fault("pings", for_s=0.2)
    texts: list[str] = []
    response = be.complete(request(), on_text=texts.append)
    assert response.text == "streamed in the ordinary way" and len(texts) > 1


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"error": {"message": "upstream timed out"}}', "upstream timed out"),
        (b'{"id": "x", "object": "chat.completion"}', "no choices"),
        (b'{"choices": [{"index": 0, "message": "hi"}]}', "message is not an object"),
        (b'{"choices": [{"index": 0, "message": {"content": 3}}]}', "content is not text"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_a_json_body_that_is_no_completion_is_a_malformed_stream(body, says):
    with pytest.raises(MalformedStream, match=says):
        StreamState().take_whole(body)


def test_a_build_through_such_a_proxy_records_usage_and_cost_once(cli, tmp_path):
    """A priced model (as on a hosted origin behind the proxy): the row has the usage the
    origin reported and its cost; no failed attempt, no second request."""
    prices = {"models": {MODEL: {"input": 0.5, "cache_read": 0.05, "output": 2}}}
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps(prices), encoding="utf-8")
    with FakeOpenAI() as server:
        server.enqueue("Looking around.", [("list_files", {})])
        server.enqueue_fault("json_as_sse", gzip=True, chunk=64)
        server.enqueue(
            "", [("finish_phase", {"summary": "Empty dir", "report": "# Scout report\n\nEmpty.\n"})]
        )
        server.enqueue_fault("json_as_sse", lead="\n")
        db = tmp_path / "ledger.db"
        result = cli(
            "build", "hello", "Create hello.py", "--backend", "openai", "--base-url",
            server.base_url, "--model", MODEL, "--phases", "scout", "--dir", str(tmp_path / "w"),
            "--template", str(write_template(tmp_path)), "--db", str(db), "--yes", "--json",
            "--config", str(config),
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    assert len(server.requests) == 2  # not retried: the origin billed each once
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    assert len(rows) == len(server.usages) == 2
    for row, sent in zip(rows, server.usages, strict=True):
        cached = sent["prompt_tokens_details"]["cached_tokens"]
        assert (row["status"], row["error_class"]) == ("ok", None)
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
            sent["prompt_tokens"] - cached,
            cached,
            sent["completion_tokens"],
        )
        expected = ((sent["prompt_tokens"] - cached) * 0.5 + cached * 0.05) / 1e6
        expected += sent["completion_tokens"] * 2 / 1e6
        assert row["cost_usd"] == pytest.approx(expected) and row["cost_usd"] > 0
    assert rows[1]["cache_read_tokens"] > 0
