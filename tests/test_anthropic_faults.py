"""Every fault ends in a retry that succeeds or a clear classified error; usage is kept."""

from __future__ import annotations

import time

import pytest

from foundry.backends.anthropic.client import AnthropicBackend
from foundry.backends.base import FailedAttempt, Message, ModelRequest
from foundry.backends.retry import RetryPolicy
from foundry.config import FoundryConfig
from foundry.errors import BackendError
from tests.fake_time import FakeTime

MODEL = "claude-sonnet-4-6"
STATIC = "Follow the build rules exactly. " * 200  # 6400 bytes = 1600 tokens


def make(server, monkeypatch, **anthropic_settings):
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    config = FoundryConfig()
    for key, value in anthropic_settings.items():
        setattr(config.anthropic, key, value)
    fake = FakeTime()
    be = AnthropicBackend(config, MODEL, sleep=fake.sleep, clock=fake.clock, rng=lambda: 0.5)
    return be, fake


def request() -> ModelRequest:
    return ModelRequest(
        MODEL, STATIC, [], [Message("user", [{"type": "text", "text": "task"}])], 200
    )


@pytest.mark.parametrize(
    ("kind", "options", "error_class"),
    [
        ("rate_limit", {"retry_after": 3}, "rate_limited"),
        ("overloaded", {}, "overloaded"),
        ("server_error", {}, "server_error"),
        ("stream_cut", {}, "stream_interrupted"),
        ("sse_error", {}, "overloaded"),
        ("sse_error", {"error_type": "api_error"}, "server_error"),
        ("drop", {}, "connection"),
    ],
)
def test_retryable_faults_are_retried_and_reported(
    anthropic_server, monkeypatch, kind, options, error_class
):
    be, fake = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue([{"type": "text", "text": "the answer, streamed in a few pieces"}])
    anthropic_server.enqueue_fault(kind, **options)
    failed: list[FailedAttempt] = []
    texts: list[str] = []
    response = be.complete(request(), on_text=texts.append, on_failed_attempt=failed.append)
    assert response.text == "the answer, streamed in a few pieces"
    assert [(f.error_class, f.will_retry) for f in failed] == [(error_class, True)]
    assert len(anthropic_server.requests) == 2 and len(fake.sleeps) == 1
    assert fake.sleeps[0] == (
        3 if kind == "rate_limit" else 0.75
    )  # retry-after floor; else jittered 1s
    if kind in ("stream_cut", "sse_error"):
        # The server reported usage in message_start before failing: it is kept, not lost.
        reported = anthropic_server.responses_usage[0]
        assert failed[0].usage.cache_write_5m_tokens == reported["cache_creation_input_tokens"] > 0
        assert failed[0].request_id
        # The cut attempt's cache write counts: the retry reads it.
        assert response.usage.cache_read_tokens == reported["cache_creation_input_tokens"]
    else:
        assert failed[0].usage.total_input_tokens == 0


def test_a_slow_server_times_out_then_the_retry_succeeds(anthropic_server, monkeypatch):
    be, fake = make(anthropic_server, monkeypatch, timeout_s=0.3)
    anthropic_server.enqueue_fault("slow", delay_s=1.0)
    failed: list[FailedAttempt] = []
    assert be.complete(request(), on_failed_attempt=failed.append).text == "OK"
    assert [f.error_class for f in failed] == ["timeout"]


def test_a_server_that_only_pings_hits_the_deadline_then_the_retry_succeeds(
    anthropic_server, monkeypatch
):
    # A ping every 0.1 s keeps the socket alive past any read timeout; only the attempt's
    # own deadline ends it.
    be, _ = make(anthropic_server, monkeypatch, deadline_s=0.5)
    anthropic_server.enqueue_fault("pings", every_s=0.1, for_s=10.0)
    failed: list[FailedAttempt] = []
    started = time.monotonic()
    assert be.complete(request(), on_failed_attempt=failed.append).text == "OK"
    assert time.monotonic() - started < 5.0
    assert [(f.error_class, f.will_retry) for f in failed] == [("timeout", True)]
    assert "within 0.5 s (anthropic.deadline_s)" in failed[0].message
    # A failed attempt records how long it took, as a successful one does.
    assert failed[0].usage.duration_ms is not None and failed[0].usage.duration_ms >= 500


def test_a_slow_but_timely_response_just_succeeds(anthropic_server, monkeypatch):
    be, _ = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue_fault("slow", delay_s=0.05, chunk_delay_s=0.01)
    failed: list[FailedAttempt] = []
    response = be.complete(request(), on_failed_attempt=failed.append)
    assert response.text == "OK" and failed == [] and response.usage.ttft_ms >= 50


@pytest.mark.parametrize(
    ("options", "error_class", "hint"),
    [
        (
            {
                "status": 400,
                "error_type": "invalid_request_error",
                "message": "prompt is too long: 250123 tokens > 200000 maximum",
            },
            "context_too_long",
            "context window",
        ),
        (
            {"status": 400, "error_type": "invalid_request_error", "message": "messages: bad"},
            "bad_request",
            None,
        ),
        (
            {"status": 403, "error_type": "permission_error", "message": "no access"},
            "permission",
            "access",
        ),
        (
            {"status": 404, "error_type": "not_found_error", "message": "model: nope"},
            "not_found",
            "model id",
        ),
    ],
)
def test_non_retryable_errors_fail_at_once_classified(
    anthropic_server, monkeypatch, options, error_class, hint
):
    be, fake = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue_fault("error", **options)
    failed: list[FailedAttempt] = []
    with pytest.raises(BackendError) as info:
        be.complete(request(), on_failed_attempt=failed.append)
    assert info.value.error_class == error_class and not info.value.retryable
    assert options["message"] in info.value.message
    assert hint is None or hint in (info.value.hint or "")
    assert [(f.error_class, f.will_retry) for f in failed] == [(error_class, False)]
    assert fake.sleeps == [] and len(anthropic_server.requests) == 1


def test_a_bad_request_mid_stream_is_not_retried(anthropic_server, monkeypatch):
    be, fake = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue_fault(
        "sse_error", error_type="invalid_request_error", message="bad block"
    )
    with pytest.raises(BackendError) as info:
        be.complete(request())
    assert info.value.error_class == "bad_request" and fake.sleeps == []


def test_retries_stop_at_max_retries_with_every_attempt_reported(anthropic_server, monkeypatch):
    be, fake = make(anthropic_server, monkeypatch, max_retries=2)
    for _ in range(3):
        anthropic_server.enqueue_fault("overloaded")
    failed: list[FailedAttempt] = []
    with pytest.raises(BackendError) as info:
        be.complete(request(), on_failed_attempt=failed.append)
    assert info.value.error_class == "overloaded" and info.value.retryable
    assert "after 3 attempts" in info.value.message and "max_retries" in info.value.hint
    assert [f.will_retry for f in failed] == [True, True, False]
    assert fake.sleeps == [0.75, 1.5]  # exponential: 1s, 2s steps at 75% jitter


def test_retry_after_beyond_the_budget_gives_up_without_sleeping(anthropic_server, monkeypatch):
    be, fake = make(anthropic_server, monkeypatch, retry_budget_s=5)
    anthropic_server.enqueue_fault("rate_limit", retry_after=60)
    with pytest.raises(BackendError) as info:
        be.complete(request())
    assert info.value.error_class == "rate_limited" and fake.sleeps == []
    # It says why it gave up at once: the wait asked for, not "retries exhausted".
    assert "asked to retry after 60 s, past the retry budget" in (info.value.hint or "")
    assert "retries exhausted" not in str(info.value)


def test_retry_policy_backoff_and_jitter():
    policy = RetryPolicy(max_retries=10, budget_s=1000, rng=lambda: 1.0)
    assert [policy.backoff(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    low = RetryPolicy(max_retries=10, budget_s=1000, rng=lambda: 0.0)
    assert low.backoff(3) == 4  # jitter keeps at least half the step
    assert policy.next_delay(error_class="bad_request", retries_done=0, elapsed_s=0) is None
    assert policy.next_delay(error_class="overloaded", retries_done=10, elapsed_s=0) is None
    assert (
        policy.next_delay(error_class="rate_limited", retries_done=0, elapsed_s=0, retry_after_s=9)
        == 9
    )
    assert policy.next_delay(error_class="timeout", retries_done=0, elapsed_s=999.5) is None


@pytest.mark.parametrize("variant", ["bad_json", "unknown_index", "missing_text"])
def test_a_malformed_stream_is_retried_like_a_broken_one(anthropic_server, monkeypatch, variant):
    # A proxy or an "Anthropic-compatible" server can send events the real API never does.
    be, fake = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue([{"type": "text", "text": "the answer"}])
    anthropic_server.enqueue_fault("garbled", variant=variant)
    failed: list[FailedAttempt] = []
    response = be.complete(request(), on_failed_attempt=failed.append)
    assert response.text == "the answer"
    assert [(f.error_class, f.will_retry) for f in failed] == [("malformed_stream", True)]
    assert "not the Anthropic API's" in failed[0].message
    # message_start had arrived: its usage (the cache write) is kept for the ledger.
    assert failed[0].usage.cache_write_5m_tokens > 0


def test_a_server_that_always_garbles_ends_in_a_clear_error(anthropic_server, monkeypatch):
    be, fake = make(anthropic_server, monkeypatch, max_retries=1)
    for _ in range(2):
        anthropic_server.enqueue_fault("garbled", variant="bad_json")
    with pytest.raises(BackendError) as info:
        be.complete(request())
    assert info.value.error_class == "malformed_stream" and info.value.retryable
    assert "not JSON" in info.value.message and "after 2 attempts" in info.value.message
    assert "ANTHROPIC_BASE_URL" in info.value.hint  # where to look, not "try again later"


def test_a_bug_in_the_text_callback_is_raised_not_retried_as_a_server_fault(
    anthropic_server, monkeypatch
):
    # Only the server's events are judged malformed; foundry's own errors must surface.
    be, fake = make(anthropic_server, monkeypatch)

    def broken(text: str) -> None:
        raise KeyError("display bug")

    with pytest.raises(KeyError, match="display bug"):
        be.complete(request(), on_text=broken)
    assert fake.sleeps == [] and len(anthropic_server.requests) == 1


def test_a_whole_json_message_for_a_streaming_request_is_taken_with_its_usage(
    anthropic_server, monkeypatch
):
    # LiteLLM's mock answers a streaming request with a plain JSON Message.
    be, fake = make(anthropic_server, monkeypatch)
    anthropic_server.enqueue([{"type": "text", "text": "a whole message"}])
    anthropic_server.enqueue_fault("json_for_stream")
    failed: list[FailedAttempt] = []
    texts: list[str] = []
    response = be.complete(request(), on_text=texts.append, on_failed_attempt=failed.append)
    assert failed == [] and fake.sleeps == [] and len(anthropic_server.requests) == 1
    assert response.text == "a whole message" and texts == ["a whole message"]
    reported = anthropic_server.responses_usage[0]
    assert response.usage.cache_write_5m_tokens == reported["cache_creation_input_tokens"] > 0
    assert response.usage.output_tokens == reported["output_tokens"] > 0
    assert response.stop_reason == "end_turn" and response.usage.duration_ms is not None


def test_the_key_goes_as_x_api_key_as_well_as_bearer(anthropic_server, monkeypatch):
    be, _ = make(anthropic_server, monkeypatch)
    be.complete(request())
    sent = anthropic_server.headers[-1]
    key = anthropic_server.api_key
    assert sent["x-api-key"] == key and sent["authorization"] == f"Bearer {key}"
