"""Every fault an OpenAI-compatible server can throw ends in a retry that succeeds or in one
clear classified error, over real HTTP; every attempt reaches on_failed_attempt."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from foundry.backends.base import FailedAttempt, Message, ModelRequest
from foundry.backends.openai.client import OpenAIBackend
from foundry.config import FoundryConfig
from foundry.errors import BackendError
from tests.fake_openai import FakeOpenAI
from tests.fake_time import FakeTime

MODEL = "fake-model"
REPLY = "the answer, streamed in several pieces"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def make(server: FakeOpenAI, **settings) -> tuple[OpenAIBackend, FakeTime]:
    config = FoundryConfig()
    for key, value in settings.items():
        setattr(config.openai, key, value)
    fake = FakeTime()
    be = OpenAIBackend(
        config, MODEL, base_url=server.base_url, sleep=fake.sleep, clock=fake.clock, rng=lambda: 0.5
    )
    return be, fake


def request() -> ModelRequest:
    return ModelRequest(
        MODEL,
        "Follow the rules. " * 50,
        [],
        [Message("user", [{"type": "text", "text": "go"}])],
        64,
    )


@pytest.mark.parametrize(
    ("kind", "options", "error_class"),
    [
        ("rate_limit", {"retry_after": 3}, "rate_limited"),
        ("server_error", {}, "server_error"),
        ("overloaded", {}, "overloaded"),
        ("error", {"status": 529, "message": "Overloaded"}, "overloaded"),
        ("stream_cut", {"after": 2}, "stream_interrupted"),
        ("sse_error", {}, "server_error"),
        ("garbled", {}, "malformed_stream"),
        ("no_finish", {}, "stream_interrupted"),
    ],
)
def test_retryable_faults_are_retried_and_reported(server, kind, options, error_class) -> None:
    be, fake = make(server)
    server.enqueue(REPLY)
    server.enqueue(REPLY)
    server.enqueue_fault(kind, **options)
    failed: list[FailedAttempt] = []
    texts: list[str] = []
    response = be.complete(request(), on_text=texts.append, on_failed_attempt=failed.append)
    assert response.text == REPLY
    assert [(f.error_class, f.will_retry) for f in failed] == [(error_class, True)]
    assert len(server.requests) == 2 and len(fake.sleeps) == 1
    # retry-after is a floor; otherwise the first backoff: 1 s jittered to 0.75 s.
    assert fake.sleeps[0] == (3 if kind == "rate_limit" else 0.75)
    assert failed[0].started_at and response.started_at
    assert (
        response.usage.input_tokens + response.usage.cache_read_tokens
        == (server.usages[-1]["prompt_tokens"])
    )


def test_a_slow_server_times_out_then_the_retry_succeeds(server) -> None:
    be, _ = make(server, timeout_s=0.3)
    be.loopback = False  # on loopback, silence is a prefill (test_openai_progress.py)
    server.enqueue_fault("slow", delay_s=1.0)
    failed: list[FailedAttempt] = []
    assert be.complete(request(), on_failed_attempt=failed.append).text == "OK"
    assert [f.error_class for f in failed] == ["timeout"]


def test_keepalive_comments_do_not_hold_an_attempt_past_its_deadline(server) -> None:
    be, _ = make(server, deadline_s=0.5)
    server.enqueue_fault("pings", for_s=3.0)
    failed: list[FailedAttempt] = []
    assert be.complete(request(), on_failed_attempt=failed.append).text == "OK"
    assert [f.error_class for f in failed] == ["timeout"]
    assert "openai.deadline_s" in failed[0].message
    assert failed[0].usage.duration_ms is not None and failed[0].usage.duration_ms < 2000


def test_context_too_long_is_not_retried_and_says_what_to_do(server) -> None:
    be, fake = make(server)
    server.enqueue_fault("context")
    failed: list[FailedAttempt] = []
    with pytest.raises(BackendError) as caught:
        be.complete(request(), on_failed_attempt=failed.append)
    error = caught.value
    assert error.error_class == "context_too_long" and not error.retryable
    assert "maximum context length is 2048 tokens" in error.message
    assert "--max-model-len" in (error.hint or "") and "\n" not in str(error)
    assert [(f.error_class, f.will_retry) for f in failed] == [("context_too_long", False)]
    assert fake.sleeps == []


@pytest.mark.parametrize(
    ("options", "error_class"),
    [
        ({"status": 400, "message": "x", "code": "context_length_exceeded"}, "context_too_long"),
        ({"status": 400, "message": "messages: bad"}, "bad_request"),
        ({"status": 403, "message": "no access"}, "permission"),
        ({"status": 404, "message": "no such model"}, "not_found"),
        ({"status": 429, "message": "quota", "code": "insufficient_quota"}, "permission"),
    ],
)
def test_non_retryable_errors_fail_at_once(server, options, error_class) -> None:
    be, fake = make(server)
    server.enqueue_fault("error", **options)
    with pytest.raises(BackendError) as caught:
        be.complete(request())
    assert caught.value.error_class == error_class and fake.sleeps == []
    assert len(server.requests) == 1


def test_retries_stop_at_max_retries_with_every_attempt_reported(server) -> None:
    be, fake = make(server, max_retries=2)
    for _ in range(3):
        server.enqueue_fault("server_error")
    failed: list[FailedAttempt] = []
    with pytest.raises(BackendError) as caught:
        be.complete(request(), on_failed_attempt=failed.append)
    assert [f.will_retry for f in failed] == [True, True, False]
    assert "after 3 attempts" in caught.value.message and caught.value.retryable
    assert "openai.max_retries" in (caught.value.hint or "")
    assert fake.sleeps == [0.75, 1.5]


def test_the_retry_budget_ends_retries_early(server) -> None:
    be, fake = make(server, retry_budget_s=5.0)
    server.enqueue_fault("rate_limit", retry_after=30)
    with pytest.raises(BackendError) as caught:
        be.complete(request())
    assert caught.value.error_class == "rate_limited" and fake.sleeps == []


def test_a_server_that_is_down_is_a_connection_error() -> None:
    config = FoundryConfig()
    config.openai.max_retries = 1
    fake = FakeTime()
    be = OpenAIBackend(config, MODEL, base_url="http://127.0.0.1:9/v1", sleep=fake.sleep)
    with pytest.raises(BackendError) as caught:
        be.complete(request())
    assert caught.value.error_class == "connection"
    assert "is the server running?" in (caught.value.hint or "")


def test_a_cancelled_request_stops_and_is_not_retried(server) -> None:
    import threading

    be, fake = make(server)
    server.enqueue(REPLY)
    cancel = threading.Event()
    cancel.set()
    failed: list[FailedAttempt] = []
    with pytest.raises(BackendError) as caught:
        be.complete(request(), on_failed_attempt=failed.append, cancel=cancel)
    assert caught.value.error_class == "cancelled" and fake.sleeps == []
    assert [(f.error_class, f.will_retry) for f in failed] == [("cancelled", False)]
