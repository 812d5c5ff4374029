"""`foundry serve`'s caches and limits, measured through the real server: the disk prefix
across a restart, the in-memory LRU across clients, the response cache, the memory guard,
the queue, cancellation on disconnect, and the context policy."""

from __future__ import annotations

import threading
import time

import anthropic
import httpx2
import numpy as np
import pytest

from tests.serve_helpers import READ_TOOL, serving, system_blocks
from tests.tiny_model import build_tiny_model

pytestmark = pytest.mark.mlx
pytest.importorskip("uvicorn")  # the serve extra: pip install -e '.[serve]'
pytest.importorskip("starlette")


def ask(client, text: str, history: list | None = None, **kwargs):
    messages = (history or []) + [{"role": "user", "content": text}]
    kwargs.setdefault("max_tokens", 6)
    kwargs.setdefault("system", system_blocks())
    return client.messages.create(model="claude-sonnet-4-6", messages=messages, **kwargs)


def test_a_restarted_server_reads_the_prefix_from_disk(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path) as first:
        cold = ask(first.client(), "Build a todo app")
    written = cold.usage.cache_creation_input_tokens
    assert written > 100
    with serving(tiny_model_dir, tmp_path) as second:
        warm = ask(second.client(), "Build a wiki")  # another conversation, same system
        assert warm.usage.cache_read_input_tokens == written
        assert warm.usage.cache_creation_input_tokens == 0
        stats = second.stats()["since_start"]
        assert stats["disk_hits"] == 1 and stats["misses"] == 0
    # Each server start is one session on the ledger, closed on shutdown.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "ledger.db")
    builds = conn.execute("SELECT name, status FROM builds ORDER BY started_at").fetchall()
    assert builds == [(f"serve-{tiny_model_dir.name}", "completed")] * 2


def test_the_in_memory_lru_keeps_several_conversations(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path) as served:
        a, b = served.client(), served.client()
        a1 = ask(a, "Conversation A starts here")
        b1 = ask(b, "Conversation B is another one")
        history_a = [
            {"role": "user", "content": "Conversation A starts here"},
            {"role": "assistant", "content": "ok"},
        ]
        history_b = [
            {"role": "user", "content": "Conversation B is another one"},
            {"role": "assistant", "content": "ok"},
        ]
        a2 = ask(a, "next in A", history_a)
        b2 = ask(b, "next in B", history_b)
        # Each second turn reuses its own first turn, though the other ran in between.
        assert a2.usage.cache_read_input_tokens >= a1.usage.cache_creation_input_tokens + 8
        assert b2.usage.cache_read_input_tokens >= b1.usage.cache_read_input_tokens + 8
        assert served.stats()["since_start"]["l1_hits"] >= 3


def test_a_copied_prefix_stays_exact_when_its_source_grows(tiny_model_dir, tmp_path) -> None:
    from foundry.backends.mlx import MLXBackend
    from foundry.config import FoundryConfig
    from foundry.local.engine import prefill
    from foundry.local.kv_pool import copy_prefix

    backend = MLXBackend(
        FoundryConfig.model_validate({"prefix_cache": {"enabled": False}}), str(tiny_model_dir)
    )
    backend.load()
    loaded = backend._loaded
    tokens = list(range(10, 90))
    source = loaded.make_cache()
    prefill(loaded.model, source, tokens)
    copy = copy_prefix(source, 50)
    prefill(loaded.model, source, [7, 8, 9])  # the source grows past the copied part
    warm = prefill(loaded.model, copy, [5])
    cold = prefill(loaded.model, loaded.make_cache(), tokens[:50] + [5])
    np.testing.assert_allclose(np.array(warm), np.array(cold), atol=1e-4, rtol=1e-4)


def test_an_identical_greedy_request_is_replayed(tiny_model_dir, tmp_path, script) -> None:
    with serving(tiny_model_dir, tmp_path) as served:
        client = served.client()
        script.replies.append("A reply worth keeping.")
        # No temperature: the server's default (mlx.temperature, 0) makes the reply greedy.
        first = ask(client, "same question", max_tokens=50)
        started = time.perf_counter()
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=50,
            system=system_blocks(),
            messages=[{"role": "user", "content": "same question"}],
        )
        elapsed = time.perf_counter() - started
        again = raw.parse()
        assert raw.headers["x-foundry-cache"] == "response" and elapsed < 0.5
        assert again.content == first.content and again.id != first.id
        assert again.usage.cache_read_input_tokens == first.usage.input_tokens + (
            first.usage.cache_creation_input_tokens
        )
        assert (
            again.usage.input_tokens == 0 and again.usage.output_tokens == first.usage.output_tokens
        )
        # Streamed the same way: the same text deltas as the live stream would send.
        with client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=50,
            system=system_blocks(),
            messages=[{"role": "user", "content": "same question"}],
        ) as stream:
            assert "".join(stream.text_stream) == "A reply worth keeping."
        # Another max_tokens decides the output: not the same request.
        ask(client, "same question", max_tokens=49)
        l2 = served.stats()["l2"]
        assert (l2["hits"], l2["stores"]) == (2, 2)
        _wait_for(lambda: len(served.ledger_rows()) == 4)  # a replay's row follows its reply
        rows = served.ledger_rows()
        assert (
            len(rows) == 4 and rows[1]["cache_read_tokens"] == again.usage.cache_read_input_tokens
        )
        # A sampled reply (temperature > 0) is never replayed.
        ask(client, "sampled", extra_body={"temperature": 0.7})
        ask(client, "sampled", extra_body={"temperature": 0.7})
        assert served.stats()["l2"]["hits"] == 2


def test_no_response_cache_runs_the_model_every_time(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path, response_cache=False) as served:
        client = served.client()
        ask(client, "same")
        ask(client, "same")
        stats = served.stats()
        assert stats["l2"] == {"enabled": False} and stats["since_start"]["l1_hits"] == 1


def test_the_memory_guard_evicts_then_refuses_with_a_529(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path) as served:
        client, backend = served.client(), served.backend
        texts = [f"conversation {word} " * 20 for word in ("alpha", "beta", "gamma", "delta")]
        needed = max(
            backend._memory.needed(backend.count_request_tokens(_req(t)) + 6) for t in texts
        )
        # Room for one request and about two kept conversations.
        backend.memory_budget = needed + 2 * backend._memory.kv_bytes(600)
        for text in texts:
            ask(client, text)
        state = served.stats()["l1"]
        assert state["evictions"] >= 1 and len(state["entries"]) <= 3
        assert state["bytes"] <= backend.memory_budget - backend._memory.working_bytes(600)
        backend.memory_budget = needed // 4
        with pytest.raises(anthropic.APIStatusError) as caught:
            ask(client, "too big for the budget")
        assert caught.value.status_code == 529
        error = caught.value.body["error"]
        assert error["type"] == "overloaded_error" and "memory budget" in error["message"]
        assert served.ledger_rows()[-1]["error_class"] == "overloaded"


def _req(text: str):
    from foundry.backends.base import Message
    from foundry.local.chat import ClientRequest
    from tests.serve_helpers import SYSTEM

    return ClientRequest("m", SYSTEM, [], [Message("user", [{"type": "text", "text": text}])], 6)


def _stream_body(text: str, max_tokens: int = 1000) -> dict:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": max_tokens,
        "stream": True,
        "system": system_blocks(),
        "messages": [{"role": "user", "content": text}],
    }


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_disconnect_cancels_within_one_decode_step(tiny_model_dir, tmp_path, script) -> None:
    script.endless, script.delay_s = True, 0.01
    with serving(tiny_model_dir, tmp_path, mlx={"max_tokens": 100000}) as served:
        script.backend = served.backend
        with httpx2.stream(
            "POST", f"{served.url}/v1/messages", json=_stream_body("go on"), timeout=30
        ) as response:
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("event: content_block_delta")
                if seen >= 5:
                    break  # leaving the block closes the connection
        _wait_for(lambda: served.ledger_rows() and not served.service.queue.busy)
        row = served.ledger_rows()[-1]
        assert row["status"] == "cancelled" and row["error_class"] == "cancelled"
        assert script.after_cancel <= 1
        assert 5 <= row["output_tokens"] <= script.sampled
        # The cancelled conversation's cache is kept as it is (its token ids, its KV
        # cache), and the server goes on.
        kept = served.backend._pool.newest
        assert kept is not None and all(isinstance(t, int) for t in kept.tokens)
        assert len(kept.tokens) > 100 and isinstance(kept.cache, list)
        script.endless = False
        after = ask(served.client(), "go on")
        assert after.usage.cache_read_input_tokens > 100


def test_a_full_queue_is_a_429_with_retry_after(tiny_model_dir, tmp_path, script) -> None:
    script.endless, script.delay_s = True, 0.01
    with serving(
        tiny_model_dir, tmp_path, serve={"queue_size": 0}, mlx={"max_tokens": 100000}
    ) as served:
        script.backend = served.backend
        holder = threading.Thread(
            target=lambda: httpx2.post(
                f"{served.url}/v1/messages", json=_stream_body("hold"), timeout=60
            )
        )
        holder.start()
        _wait_for(lambda: served.service.queue.busy)
        with pytest.raises(anthropic.RateLimitError) as caught:
            ask(served.client(), "me too")
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert caught.value.body["error"]["type"] == "rate_limit_error"
        served.service.begin_shutdown("test over")  # ends the endless one
        holder.join(30)
    errors = [r["error_class"] for r in served.ledger_rows()]
    assert "rate_limit" in errors and "cancelled" in errors


def test_shutdown_ends_an_inflight_stream_and_records_it(tiny_model_dir, tmp_path, script) -> None:
    script.endless, script.delay_s = True, 0.01
    with serving(tiny_model_dir, tmp_path, mlx={"max_tokens": 100000}) as served:
        script.backend = served.backend
        with httpx2.stream(
            "POST", f"{served.url}/v1/messages", json=_stream_body("long"), timeout=30
        ) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("event: content_block_delta"):
                    break
            served.service.begin_shutdown()
            rest = "\n".join(lines)
    assert "event: error" in rest and "overloaded_error" in rest and "shutting down" in rest
    assert served.ledger_rows()[-1]["status"] == "cancelled"


def test_trim_drops_the_oldest_turns_and_keeps_the_prefix(tmp_path) -> None:
    small = build_tiny_model(tmp_path / "small", max_position_embeddings=1200)
    history: list[dict] = []
    for turn in range(12):
        history += [
            {"role": "user", "content": f"Question number {turn} about the quick brown fox?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": f"t{turn}",
                        "name": "read_file",
                        "input": {"path": f"{turn}.py"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": f"t{turn}",
                        "content": "def add(a, b): return a + b",
                    }
                ],
            },
            {"role": "assistant", "content": f"Answer {turn}: the lazy dog."},
        ]
    with (
        serving(small, tmp_path / "h1") as strict,
        pytest.raises(anthropic.BadRequestError, match="prompt is too long"),
    ):
        ask(strict.client(), "and now?", history, tools=[READ_TOOL])
    with serving(small, tmp_path / "h2", context_policy="trim") as served:
        client = served.client()
        first = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=6,
            system=system_blocks(),
            tools=[READ_TOOL],
            messages=history + [{"role": "user", "content": "and now?"}],
        )
        dropped = dict(
            part.split("=") for part in first.headers["x-foundry-context-trimmed"].split("; ")
        )
        assert int(dropped["messages"]) >= 4 and int(dropped["tokens"]) > 0
        usage = first.parse().usage
        assert (
            usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
            < 1200
        )
        # The next turn keeps the same cut, so it reuses the trimmed conversation from memory.
        more = history + [
            {"role": "user", "content": "and now?"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "more"},
        ]
        second = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=6,
            system=system_blocks(),
            tools=[READ_TOOL],
            messages=more,
        )
        assert second.headers["x-foundry-context-trimmed"].startswith(
            f"messages={dropped['messages']};"
        )
        assert second.parse().usage.cache_read_input_tokens > usage.cache_creation_input_tokens


def test_trimming_keeps_tool_pairs_whole() -> None:
    from foundry.backends.base import Message
    from foundry.local.chat import ClientRequest
    from foundry.server.context import fit

    use = {"type": "tool_use", "id": "t1", "name": "read_file", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "x"}
    messages = [
        Message("user", [{"type": "text", "text": "start"}]),
        Message("assistant", [use]),
        Message("user", [result, {"type": "text", "text": "go on"}]),
        Message("assistant", [{"type": "text", "text": "done"}]),
        Message("user", [{"type": "text", "text": "last"}]),
    ]
    request = ClientRequest("m", "sys", [], messages, 10)
    lengths = {5: 100, 3: 60, 1: 90}  # tokens by number of messages kept
    trimmed, tokens, info = fit(
        request,
        100,
        window=80,
        policy="trim",
        keep_last=1,
        reply_room=5,
        count=lambda r: lengths[len(r.messages)],
    )
    assert info is not None and info.messages == 2 and tokens == 60
    first = trimmed.messages[0].content
    assert first[0]["text"].startswith("[2 earlier messages were trimmed")
    assert [b["type"] for b in first[1:]] == ["text"]  # the orphaned tool_result went too


@pytest.mark.parametrize("temperature", [None, 1.0])
def test_a_client_that_gives_up_on_a_whole_reply_and_does_not_retry_cancels_it(
    tiny_model_dir, tmp_path, script, monkeypatch, temperature
) -> None:
    """Greedy (the default temperature, 0): after the grace a retry would have had; sampled:
    at once (a retry could not be answered with it)."""
    from foundry.server import replay

    monkeypatch.setattr(replay, "RETRY_GRACE_S", 0.3)
    script.endless, script.delay_s = True, 0.01
    with serving(tiny_model_dir, tmp_path, mlx={"max_tokens": 100000}) as served:
        script.backend = served.backend
        body = {**_stream_body("no stream"), "stream": False}
        if temperature is not None:
            body["temperature"] = temperature
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(
                f"{served.url}/v1/messages", json=body, timeout=httpx2.Timeout(30, read=0.5)
            )
        _wait_for(lambda: served.ledger_rows() and not served.service.queue.busy)
        row = served.ledger_rows()[-1]
        assert (row["status"], row["error_class"]) == ("cancelled", "cancelled")
        assert script.after_cancel <= 1


def test_the_retry_of_a_whole_reply_whose_client_timed_out_gets_that_reply(
    tiny_model_dir, tmp_path, script
) -> None:
    """Claude Code gives a non-streaming request 300 s, then sends it again. The reply its
    first attempt left runs on, and the retry, waiting behind it, is answered with it from
    the response cache: nothing is generated twice."""
    words = " ".join(f"step{i}" for i in range(60))
    script.replies, script.delay_s = [words], 0.02  # over a second of decoding
    with serving(tiny_model_dir, tmp_path) as served:
        script.backend = served.backend
        body = {**_stream_body("write the plan", max_tokens=400), "stream": False}
        url = f"{served.url}/v1/messages"
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(url, json=body, timeout=httpx2.Timeout(30, read=0.3))
        retry = httpx2.post(url, json=body, timeout=60)
        assert retry.status_code == 200, retry.text
        assert retry.headers.get("x-foundry-cache") == "response"
        assert retry.json()["content"][0]["text"].split() == words.split()
        _wait_for(lambda: len(served.ledger_rows()) == 2)
        ran, replayed = served.ledger_rows()
    assert script.sampled == ran["output_tokens"] - 1  # the scripted reply, generated once
    assert ran["status"] == "ok" and ran["output_tokens"] > 0
    assert replayed["status"] == "ok" and replayed["cache_read_tokens"] > 0
