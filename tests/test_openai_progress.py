"""An attempt is judged by its progress, not by a fixed total (issue 23): a loopback server
that prefills in silence keeps its request while the connection stays open, a reply that
keeps coming is never cut, a server elsewhere that sends nothing for the idle limit
(`openai.timeout_s`) is a clear timeout, and `openai.deadline_s` remains the last resort for
a connection that stays open without any part of a reply. Limits are shortened through the
config so each test takes a second or two."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from foundry.backends.base import FailedAttempt, Message, ModelRequest
from foundry.backends.openai.client import OpenAIBackend
from foundry.config import FoundryConfig, OpenAIConfig
from foundry.errors import BackendError
from foundry.ledger import Ledger, utc_now
from tests.fake_openai import FakeOpenAI
from tests.fake_time import FakeTime

MODEL = "fake-model"
REPLY = "a reply that arrives in several pieces, one by one"  # 7 pieces of 8 characters


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def make(server: FakeOpenAI, *, loopback: bool = True, **settings: float) -> OpenAIBackend:
    config = FoundryConfig()
    for key, value in settings.items():
        setattr(config.openai, key, value)
    fake = FakeTime()  # retry back-offs are recorded, not slept
    be = OpenAIBackend(config, MODEL, base_url=server.base_url, sleep=fake.sleep, clock=fake.clock)
    be.loopback = loopback  # False: the fake server stands in for one on another machine
    return be


def request() -> ModelRequest:
    user = Message("user", [{"type": "text", "text": "go"}])
    return ModelRequest(MODEL, "Follow the rules. " * 50, [], [user], 64)


@pytest.mark.parametrize("before_headers", [False, True])
def test_a_silent_prefill_on_loopback_is_not_cut_while_the_connection_is_open(
    server, before_headers
) -> None:
    # mlx_lm.server sends nothing between its keep-alives, one per prefill step: minutes
    # on a busy machine. Here the silence is four times the idle limit.
    be = make(server, timeout_s=0.3, deadline_s=10.0)
    server.enqueue(REPLY)
    server.enqueue_fault("prefill", for_s=1.2, before_headers=before_headers)
    failed: list[FailedAttempt] = []
    response = be.complete(request(), on_failed_attempt=failed.append)
    assert failed == [] and response.text == REPLY and len(server.requests) == 1
    assert response.usage.ttft_ms is not None and response.usage.ttft_ms >= 1200


def test_a_reply_that_keeps_coming_is_not_cut_at_a_total(server) -> None:
    # 7 pieces 0.25 s apart: 1.75 s in all, over three times deadline_s; no gap reaches it.
    be = make(server, deadline_s=0.5)
    server.enqueue(REPLY)
    server.enqueue_fault("slow", delay_s=0.0, chunk_delay_s=0.25)
    failed: list[FailedAttempt] = []
    response = be.complete(request(), on_failed_attempt=failed.append)
    assert failed == [] and response.text == REPLY
    assert response.usage.duration_ms is not None and response.usage.duration_ms > 1500


def test_a_stalled_remote_server_is_cut_at_the_idle_limit(server, tmp_path) -> None:
    be = make(server, loopback=False, timeout_s=0.3, max_retries=0)
    server.enqueue_fault("prefill", for_s=3.0)
    failed: list[FailedAttempt] = []
    with pytest.raises(BackendError) as caught:
        be.complete(request(), on_failed_attempt=failed.append)
    error = caught.value
    assert error.error_class == "timeout" and error.retryable
    assert "sent nothing for 0.3 s" in error.message and "openai.timeout_s" in error.message
    assert "openai.timeout_s" in (error.hint or "") and "\n" not in str(error)
    assert [(f.error_class, f.will_retry) for f in failed] == [("timeout", False)]
    duration_ms = failed[0].usage.duration_ms
    assert duration_ms is not None and 300 <= duration_ms < 2000
    # On the ledger as every failed attempt is: an error row with its class and timings.
    with Ledger.open(tmp_path / "l.db") as ledger:
        ledger.record_request(
            build_id=None, phase="builder", turn=1, backend="openai", model=MODEL,
            usage=failed[0].usage, started_at=failed[0].started_at or utc_now(),
            status="error", error_class=failed[0].error_class, local=be.local,
        )  # fmt: skip
    with sqlite3.connect(tmp_path / "l.db") as conn:
        row = conn.execute("SELECT status, error_class, duration_ms FROM requests").fetchone()
    assert row[:2] == ("error", "timeout") and row[2] >= 300


def test_a_stalled_remote_server_before_its_headers_is_a_timeout_then_a_retry(server) -> None:
    be = make(server, loopback=False, timeout_s=0.3)
    server.enqueue(REPLY)
    server.enqueue_fault("prefill", for_s=1.5, before_headers=True)
    failed: list[FailedAttempt] = []
    assert be.complete(request(), on_failed_attempt=failed.append).text == REPLY
    assert [f.error_class for f in failed] == ["timeout"]
    assert "sent nothing for 0.3 s" in failed[0].message


def test_keep_alives_from_a_remote_server_are_progress_for_the_idle_limit(server) -> None:
    # Comments every 50 ms for 1.2 s: never 0.3 s without a byte.
    be = make(server, loopback=False, timeout_s=0.3, deadline_s=10.0)
    server.enqueue(REPLY)
    server.enqueue_fault("pings", for_s=1.2)
    failed: list[FailedAttempt] = []
    assert be.complete(request(), on_failed_attempt=failed.append).text == REPLY
    assert failed == []


def test_a_loopback_connection_open_without_a_reply_meets_the_last_resort(server) -> None:
    be = make(server, timeout_s=0.2, deadline_s=0.6)
    server.enqueue_fault("prefill", for_s=3.0)
    failed: list[FailedAttempt] = []
    assert be.complete(request(), on_failed_attempt=failed.append).text == "OK"
    assert [f.error_class for f in failed] == ["timeout"]
    assert "openai.deadline_s" in failed[0].message
    duration_ms = failed[0].usage.duration_ms
    assert duration_ms is not None and 600 <= duration_ms < 2000


def test_the_defaults_wait_out_a_cold_prefill_on_a_busy_machine() -> None:
    # 900 s cut a cold prefill of the packaged prompt on mlx_lm.server; the last resort
    # is hours, and the idle limit stays what timeout_s always was.
    settings = OpenAIConfig()
    assert settings.deadline_s >= 4 * 3600 and settings.timeout_s == 600


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080/v1", True),
        ("http://127.5.6.7:8080/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://192.168.1.20:8080/v1", False),  # on the network: its machine may be gone
        ("http://gpu-box:8000/v1", False),
        ("http://api.localhost/v1", False),
        ("https://api.openai.com/v1", False),
    ],
)
def test_loopback_is_decided_from_the_url(url, loopback) -> None:
    from foundry.backends.openai.endpoint import is_loopback_url

    assert is_loopback_url(url) is loopback
