"""Issue 22: what a streaming client sees on the wire while a long prefill runs.

Claude Code's stream watchdog (2.1.197) is reset by the Messages API events its SDK hands
on, and by nothing else: the SDK drops `ping`, SSE comments and event names it does not
know before the watchdog sees them (docs/serve.md, "Claude Code's first request: capture,
warm, work"). Of the events it does count, the only one that is true before the model's
first token is message_start, once: foundry sends it at admission, with the real usage.
Nothing else is made up to look busy: no empty or placeholder text block (it would be part
of the reply), no thinking, no extra message_delta (Claude Code adds every message_delta's
usage to the session's cost). The pings that follow are what they are: bytes that keep the
connection, proxies and socket read timeouts alive.

The prefill is made slow (a pause after each 512-token chunk); the model, its KV cache,
HTTP and SSE are real."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.serve_helpers import serving
from tests.tiny_model import write_tiny_gguf

# Long enough for three 512-token prefill chunks, short of the tiny model's 2,048.
SYSTEM = "You are a careful build orchestrator. Read, write, test and report. " * 60
MESSAGES = [{"role": "user", "content": "Build a todo app"}]
REPLY = "Hello from foundry serve."
CHUNK_PAUSE_S = 0.4
PING_S = 0.1
# The Messages API's stream events: https://docs.anthropic.com/en/api/messages-streaming
API_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
}


def _model(backend: str, tiny_model_dir: Path, tmp_path: Path) -> Path:
    if backend == "mlx":
        return tiny_model_dir
    return write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")


ENGINES = [
    pytest.param("mlx", marks=pytest.mark.mlx, id="mlx"),
    pytest.param("llamacpp", marks=pytest.mark.llamacpp, id="llamacpp"),
]


@pytest.fixture
def slow_prefill(monkeypatch) -> list[float]:
    """Each prefill chunk takes CHUNK_PAUSE_S longer; returns when each one ended."""
    from foundry.backends.local import LocalBackend

    ended: list[float] = []
    real = LocalBackend._prefilled

    def prefilled(self, count: int) -> None:
        time.sleep(CHUNK_PAUSE_S)
        ended.append(time.monotonic())
        real(self, count)

    monkeypatch.setattr(LocalBackend, "_prefilled", prefilled)
    return ended


def _stream(url: str, body: dict[str, Any]) -> tuple[bytes, list[tuple[float, str, dict]]]:
    """The raw body, and each event with the time its last byte arrived."""
    raw = b""
    events: list[tuple[float, str, dict]] = []
    with httpx2.stream(
        "POST", f"{url}/v1/messages", json=body, headers={"x-api-key": "local"}, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        pending = b""
        for chunk in response.iter_raw():
            arrived = time.monotonic()
            raw += chunk
            pending += chunk
            while b"\n\n" in pending:
                block, pending = pending.split(b"\n\n", 1)
                name, data = "", ""
                for line in block.decode().splitlines():
                    if line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: "):
                        data += line[len("data: ") :]
                events.append((arrived, name, json.loads(data) if data else {}))
        assert pending == b""
    return raw, events


@pytest.mark.parametrize("backend", ENGINES)
def test_a_slow_prefill_streams_the_real_message_start_then_only_pings(
    backend, tiny_model_dir, tmp_path, slow_prefill, script
) -> None:
    script.replies.append(REPLY)  # mlx's sampling; llama.cpp's tiny model says what it says
    model = _model(backend, tiny_model_dir, tmp_path)
    serve = {"ping_interval_s": PING_S}
    with serving(model, tmp_path / "serve", backend=backend, serve=serve) as served:
        body = {"model": "claude-sonnet-4-6", "system": SYSTEM, "messages": MESSAGES}
        counted = served.client().messages.count_tokens(**body).input_tokens
        raw, events = _stream(served.url, {**body, "max_tokens": 64, "stream": True})
    assert len(slow_prefill) >= 3, "the prompt spans several prefill chunks"
    prefill_ended = slow_prefill[-1]
    names = [name for _, name, _ in events]

    # message_start first, while the prefill is still running, with the plan's real usage.
    arrived, name, start = events[0]
    assert name == "message_start"
    assert arrived < prefill_ended - CHUNK_PAUSE_S
    usage = start["message"]["usage"]
    prompt = (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )
    assert prompt == counted and usage["output_tokens"] == 0
    assert start["message"]["content"] == []

    # Until the model's first token only pings: bytes on the wire that no client adds to
    # its message (the SDKs drop them), repeated while the prefill runs.
    first_after = next(i for i, n in enumerate(names) if i > 0 and n != "ping")
    assert names[first_after] in ("content_block_start", "message_delta")
    assert events[first_after][0] >= prefill_ended
    during = [n for t, n, _ in events[1:] if t < prefill_ended]
    assert during and set(during) == {"ping"}
    assert len(during) >= (len(slow_prefill) - 1) * CHUNK_PAUSE_S / PING_S / 2

    # The whole stream is the API's own vocabulary: no comment lines, no invented events,
    # one message_start and one message_delta (Claude Code counts each message_delta's
    # usage into its cost), then message_stop.
    assert not any(line.startswith(b":") for line in raw.split(b"\n"))
    assert set(names) <= API_EVENTS
    assert names.count("message_start") == 1 and names.count("message_delta") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    blocks = [d["content_block"] for _, n, d in events if n == "content_block_start"]
    assert all(b["type"] in ("text", "tool_use") for b in blocks)  # no thinking, ever
    text = "".join(d["delta"].get("text", "") for _, n, d in events if n == "content_block_delta")
    if backend == "mlx":  # the scripted reply, and nothing before it
        assert [b["type"] for b in blocks] == ["text"] and text == REPLY


@pytest.mark.mlx
def test_the_anthropic_sdk_hands_on_no_event_during_the_prefill(
    tiny_model_dir, tmp_path, slow_prefill, script
) -> None:
    """The SDK's view of the same stream: message_start, then no event at all until the
    content. The pings were on the socket (they reset its read timeout) but are not events
    to it, as they are not to Claude Code's watchdog."""
    script.replies.append(REPLY)
    with serving(tiny_model_dir, tmp_path, serve={"ping_interval_s": PING_S}) as served:
        seen: list[tuple[float, str]] = []
        with served.client().messages.stream(
            model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM, messages=MESSAGES
        ) as stream:
            for event in stream:
                seen.append((time.monotonic(), event.type))
            final = stream.get_final_message()
    prefill_ended = slow_prefill[-1]
    assert [n for t, n in seen if t < prefill_ended] == ["message_start"]
    assert seen[1][1] == "content_block_start"
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == REPLY


@pytest.mark.llamacpp
def test_a_client_gone_mid_prefill_leaves_the_whole_prompt_for_its_retry(
    tiny_model_dir, tmp_path, slow_prefill
) -> None:
    """Claude Code gives up on a long cold prefill and asks again at once. The prefill goes
    on to the end of the prompt without it (the reply does not start), so the retry reads
    the whole prompt from memory instead of the chunks done when the client left."""
    model = _model("llamacpp", tiny_model_dir, tmp_path)
    body = {"model": "claude-sonnet-4-6", "system": SYSTEM, "messages": MESSAGES}
    with serving(
        model, tmp_path / "serve", backend="llamacpp", serve={"ping_interval_s": PING_S}
    ) as served:
        prompt = served.client().messages.count_tokens(**body).input_tokens
        with httpx2.stream(
            "POST",
            f"{served.url}/v1/messages",
            json={**body, "max_tokens": 64, "stream": True},
            headers={"x-api-key": "local"},
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("event: message_start"):
                    break  # the client leaves during the first prefill chunk
        deadline = time.monotonic() + 30
        while not served.ledger_rows() or served.service.queue.busy:
            assert time.monotonic() < deadline, "the cancelled request never ended"
            time.sleep(0.05)
        gone = served.ledger_rows()[-1]
        retry = served.client().messages.create(**body, max_tokens=4)
    assert len(slow_prefill) >= 3, "the prompt spans several prefill chunks"
    assert gone["status"] == "cancelled" and gone["output_tokens"] == 0
    assert gone["input_tokens"] + gone["cache_write_5m_tokens"] == prompt  # all of it ran
    assert retry.usage.cache_read_input_tokens == prompt - 1
