"""A proxy that labels a JSON reply as a stream: the LiteLLM 1.74 proxy answers a streaming
request, whose origin sent a whole JSON Message, with that body under
`content-type: text/event-stream`. The SSE decoder finds no events in it; foundry used to
record a $0 error per attempt while the origin billed each one, and fail the build. The
body is a Message: it is taken, with its usage, once. Real SDK, real HTTP, the local
Anthropic server."""

from __future__ import annotations

import pytest

from foundry.backends.base import FailedAttempt
from tests.test_anthropic_faults import make, request
from tests.test_build_e2e import assert_ledger_matches_server, requests_rows, run, use

WHOLE = "a whole message, relabelled by the proxy"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"chunk": 7, "lead": "\n  \r\n"},  # split mid-token, after blank lines
        {"gzip": True},  # the SDK asks for gzip; the sniff reads the decoded bytes
        {"gzip": True, "chunk": 5},
    ],
)
def test_a_json_message_under_an_sse_content_type_is_read_as_a_message(
    anthropic_server, monkeypatch, options
):
    be, fake = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue([{"type": "text", "text": WHOLE}])
    anthropic_server.enqueue_fault("json_as_sse", **options)
    failed: list[FailedAttempt] = []
    texts: list[str] = []
    response = be.complete(request(), on_text=texts.append, on_failed_attempt=failed.append)
    assert failed == [] and fake.sleeps == [] and len(anthropic_server.requests) == 1
    assert response.text == WHOLE and texts == [WHOLE]
    reported = anthropic_server.responses_usage[0]
    assert response.usage.cache_write_5m_tokens == reported["cache_creation_input_tokens"] > 0
    assert response.usage.input_tokens == reported["input_tokens"]
    assert response.usage.output_tokens == reported["output_tokens"] > 0
    assert response.stop_reason == "end_turn" and response.request_id is not None


def test_a_real_stream_after_the_sniff_is_still_a_stream(anthropic_server, monkeypatch):
    """The first bytes read to tell JSON from SSE reach the SDK's decoder all the same."""
    be, _ = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue([{"type": "text", "text": "streamed in the ordinary way"}])
    anthropic_server.enqueue_fault("slow", delay_s=0, chunk_delay_s=0.01)
    texts: list[str] = []
    response = be.complete(request(), on_text=texts.append)
    assert response.text == "streamed in the ordinary way" and len(texts) > 1


def test_a_build_through_such_a_proxy_records_usage_and_cost(cli, tmp_path, anthropic_env):
    server = anthropic_env
    server.enqueue([use("finish_phase", summary="s", report="r")], "tool_use")
    server.enqueue_fault("json_as_sse")
    result = run(cli, tmp_path, "--phases", "scout")
    assert result.exit_code == 0, result.stderr
    assert len(server.requests) == 1  # not retried: the origin billed one request
    (row,) = assert_ledger_matches_server(tmp_path / "ledger.db", server)
    assert (row["status"], row["error_class"]) == ("ok", None)
    assert row["cache_write_5m_tokens"] > 0 and row["output_tokens"] > 0
    assert row["cost_usd"] > 0
    assert requests_rows(tmp_path / "ledger.db") == [row]
