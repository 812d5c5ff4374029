"""The llamacpp backend on a tiny random-weight GGUF: the mlx backend's guarantees (saved
and verified prefix, in-memory turns, usage meanings, context window, constrained calls)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from foundry.backends.base import Message, ModelRequest, ToolChoice, ToolSpec
from foundry.config import FoundryConfig
from foundry.errors import BackendError, LocalModelError, UsageError
from tests.tiny_model import write_tiny_gguf

pytestmark = pytest.mark.llamacpp
READ = ToolSpec(
    "read_file",
    "Read a file.",
    {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
)
SYSTEM = "You are a careful build orchestrator. " * 40


@pytest.fixture(scope="module")
def gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def config(tmp_path, **sections) -> FoundryConfig:
    prefix_cache = {"dir": str(tmp_path / "store"), **sections.pop("prefix_cache", {})}
    return FoundryConfig.model_validate({"prefix_cache": prefix_cache, **sections})


def backend(gguf, cfg, **kwargs):
    from foundry.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(cfg, str(gguf), **kwargs)


def request(text="Build a todo app", messages=None, max_tokens=8, **kwargs) -> ModelRequest:
    messages = messages or [Message("user", [{"type": "text", "text": text}])]
    kwargs.setdefault("temperature", 0.0)
    return ModelRequest("tiny", SYSTEM, [READ], messages, max_tokens=max_tokens, **kwargs)


def assert_context_is_exact(b) -> None:
    """The context's KV cache gives the next-token logits of a cold run over the tokens it
    claims to hold (equal greedy replies alone would not show a stale KV entry)."""
    from foundry.local.llamacpp_engine import LlamaCppModel

    held = list(b._loaded.tokens)
    warm = b._loaded.feed([5])
    fresh = LlamaCppModel(b._loaded.path, "cold")
    np.testing.assert_allclose(warm, fresh.feed([*held, 5]), atol=2e-3)
    fresh.close()


def test_cold_then_saved_prefix_gives_the_same_reply(gguf, tmp_path) -> None:
    cfg = config(tmp_path)
    plain = backend(gguf, config(tmp_path, prefix_cache={"enabled": False})).complete(request())
    first = backend(gguf, cfg)
    cold = first.complete(request())
    u = cold.usage
    assert first.last_cache_event["source"] == "computed"
    assert u.cache_write_5m_tokens > 100 and u.cache_read_tokens == 0
    second = backend(gguf, cfg)  # a new build: nothing in memory, the prefix on disk
    streamed: list[str] = []
    warm = second.complete(request(), on_text=streamed.append)
    w = warm.usage
    assert second.last_cache_event["source"] == "store"
    assert w.cache_read_tokens == u.cache_write_5m_tokens and w.cache_write_5m_tokens == 0
    assert w.input_tokens >= 1 and w.total_input_tokens == u.total_input_tokens
    assert warm.content == cold.content == plain.content
    assert "".join(streamed).strip() == warm.text
    assert w.output_tokens >= 1 and w.ttft_ms > 0 and w.duration_ms >= w.ttft_ms
    assert w.prefill_tokens_per_s > 0 and w.peak_memory_mb > 0 and w.prefill_saved_ms > 0
    assert warm.stop_reason in ("end_turn", "max_tokens")
    assert_context_is_exact(second)


def test_a_corrupt_saved_prefix_is_a_miss_and_is_recomputed(gguf, tmp_path) -> None:
    cfg = config(tmp_path)
    cold = backend(gguf, cfg).complete(request())
    blocks = sorted((tmp_path / "store").glob("*.safetensors"))
    assert len(blocks) >= 2  # the prefix is stored as token blocks: any one corrupt is a miss
    saved = blocks[-1]
    data = bytearray(saved.read_bytes())
    data[-64] ^= 0xFF  # a flipped bit in the KV data loads fine: only the checksum sees it
    saved.write_bytes(bytes(data))
    again = backend(gguf, cfg)
    response = again.complete(request())
    assert again.last_cache_event["source"] == "computed"
    assert "corrupt" in again.last_cache_event["reason"]
    assert saved.with_name(saved.name + ".corrupt").is_file()
    assert response.usage.cache_read_tokens == 0
    assert response.usage.cache_write_5m_tokens == cold.usage.cache_write_5m_tokens
    assert response.content == cold.content


def test_turns_prefill_only_what_they_add(gguf, tmp_path) -> None:
    b = backend(gguf, config(tmp_path))
    messages = [Message("user", [{"type": "text", "text": "Build a todo app"}])]
    first = b.complete(request(messages=messages))
    prefix = first.usage.cache_write_5m_tokens
    messages += [
        Message("assistant", [{"type": "text", "text": "Reading the files."}]),
        Message("user", [{"type": "text", "text": "The tests pass."}]),
    ]
    second = b.complete(request(messages=messages))
    assert b.last_cache_event["source"] == "memory"
    assert second.usage.cache_read_tokens > first.usage.total_input_tokens - 2
    assert second.usage.input_tokens < 40 and second.usage.prefill_saved_ms > 0
    assert_context_is_exact(b)
    third = b.complete(request("Phase: architect"))  # a new conversation: trimmed back
    assert prefix <= third.usage.cache_read_tokens < second.usage.cache_read_tokens
    assert b.complete(request("Phase: architect")).usage.input_tokens == 1
    assert_context_is_exact(b)
    fresh = backend(gguf, config(tmp_path), reuse_conversation=False)
    again = fresh.complete(request(messages=messages))
    assert fresh.last_cache_event["source"] == "store"
    assert again.usage.cache_read_tokens == prefix and again.content == second.content


def conversation(first: str, turns: int) -> list[Message]:
    """A client's conversation after `turns` user turns."""
    messages = [Message("user", [{"type": "text", "text": first}])]
    for turn in range(turns - 1):
        messages += [
            Message("assistant", [{"type": "text", "text": f"Working on step {turn}."}]),
            Message("user", [{"type": "text", "text": f"Step {turn} is done."}]),
        ]
    return messages


def test_served_conversations_taking_turns_come_back_from_memory(gguf, tmp_path) -> None:
    """`foundry serve` with three clients taking turns and room for three conversations:
    the one the context gives up is parked (a copy of its state) and comes back whole, not
    re-read from the saved prefix; a client's own next turn parks nothing."""
    b = backend(gguf, config(tmp_path))
    b.serve_with(l1_entries=3, memory_budget_bytes=None)
    clients = ["Build a todo app", "Write a haiku about caches", "Explain the ledger"]
    for first in clients:
        b.complete(request(messages=conversation(first, 2)))
    assert [e["tokens"] > 0 for e in b.cache_state()["entries"]] == [True] * 3
    for first in (clients[1], clients[0]):  # B, then A, come back
        req = request(messages=conversation(first, 3))
        back = b.complete(req)
        u = back.usage
        assert b.last_cache_event["source"] == "memory"
        assert "parked" in b.last_cache_event["reason"]
        assert u.cache_write_5m_tokens == 0 and u.input_tokens < 40
        assert u.input_tokens + u.cache_read_tokens == b.count_request_tokens(req)
        assert_context_is_exact(b)
    live, *parked = b.cache_state()["entries"]
    assert live["live"] and live["tokens"] == len(b._loaded.tokens)
    assert len(parked) == 2 and b.cache_state()["evictions"] == 0  # C and B, none lost
    assert all(e["bytes"] >= e["tokens"] * b._loaded.kv_bytes_per_token() for e in parked)
    b.complete(request(messages=conversation(clients[0], 4)))  # A's own next turn
    assert len(b.cache_state()["entries"]) == 3  # nothing new parked
    retried = request(messages=conversation(clients[0], 4))
    again = b.complete(retried)  # the same request word for word: nothing to park either
    assert len(b.cache_state()["entries"]) == 3 and b.cache_state()["evictions"] == 0
    assert again.usage.cache_read_tokens == b.count_request_tokens(retried) - 1
    assert_context_is_exact(b)
    build = backend(gguf, config(tmp_path))  # a build keeps one conversation: nothing parked
    for first in clients[:2]:
        build.complete(request(messages=conversation(first, 2)))
    assert len(build.cache_state()["entries"]) == 1


def test_a_parked_conversation_survives_another_reading_its_prefix(gguf, tmp_path) -> None:
    """A, a side request X, then B (sharing A's system prompt) and A again: B starts from
    A's parked state, cut to what they share, and A stays parked whole, so its next turn is
    a memory hit on its whole previous prompt, not a disk hit on the system prefix."""
    b = backend(gguf, config(tmp_path))
    b.serve_with(l1_entries=3, memory_budget_bytes=None)
    a_turn = request(messages=conversation("Build a todo app", 2))
    b.complete(a_turn)
    a_prompt = b.count_request_tokens(a_turn)
    side = ModelRequest(
        "tiny",
        "Write a title.",
        [],
        [Message("user", [{"type": "text", "text": "todo"}])],
        max_tokens=4,
        temperature=0.0,
    )
    b.complete(side)
    b.complete(request(messages=conversation("Write a haiku about caches", 2)))
    assert b.last_cache_event["source"] == "memory"  # B read A's system prompt
    again = request(messages=conversation("Build a todo app", 3))
    back = b.complete(again)
    assert b.last_cache_event["source"] == "memory", b.last_cache_event
    assert back.usage.cache_read_tokens >= a_prompt, (back.usage, a_prompt)
    assert back.usage.input_tokens < 40
    assert_context_is_exact(b)


def test_a_cancelled_request_leaves_the_context_exact(gguf, tmp_path) -> None:
    import threading

    b = backend(gguf, config(tmp_path))
    cancel = threading.Event()
    failures: list = []
    with pytest.raises(BackendError) as caught:
        b.complete(
            request(max_tokens=50, temperature=1.0),
            on_text=lambda _: cancel.set(),
            cancel=cancel,
            on_failed_attempt=failures.append,
        )
    assert caught.value.error_class == "cancelled"
    assert [f.error_class for f in failures] == ["cancelled"]
    assert 1 <= failures[0].usage.output_tokens < 50
    assert_context_is_exact(b)
    again = b.complete(request())
    assert b.last_cache_event["source"] == "memory" and again.usage.cache_read_tokens > 100


def test_a_request_cancelled_mid_prefill_counts_what_it_prefilled(gguf, tmp_path) -> None:
    """A client gone during a long prefill: its ledger row counts the prompt tokens that
    were prefilled, not the whole prompt (which used to be counted as if all of it ran)."""
    import threading

    b = backend(gguf, config(tmp_path, prefix_cache={"enabled": False}))
    cancel = threading.Event()
    failures: list = []
    long_text = " ".join(f"step {i} writes file_{i}.py" for i in range(55))

    def on_prefill(progress) -> None:
        if progress.done:  # after the first chunk is in
            cancel.set()

    slow = request(long_text, on_prefill=on_prefill)
    prompt = b.count_request_tokens(slow)
    assert prompt > 1200  # three or more 512-token chunks
    with pytest.raises(BackendError):
        b.complete(slow, cancel=cancel, on_failed_attempt=failures.append)
    usage = failures[0].usage
    assert usage.input_tokens == 512, (failures, prompt)  # the one chunk in before the cancel
    assert usage.output_tokens == 0 and usage.cache_read_tokens == 0
    assert len(b._loaded.tokens) == 512
    assert_context_is_exact(b)


def test_tool_calls_are_valid_under_the_constraint(gguf, tmp_path) -> None:
    """Random weights at temperature 1 (the worst case). With one call allowed and bounded
    arguments, every reply is that call; with the build's tools, every whole call validates
    (one cut by max_tokens stays text and is never run)."""
    import jsonschema

    from foundry.orchestrator.tools import TOOL_SPECS

    bounded = ToolSpec(
        "read_file",
        "Read a file.",
        {
            "type": "object",
            "properties": {"path": {"type": "string", "maxLength": 16}},
            "required": ["path"],
        },
    )
    b = backend(gguf, config(tmp_path))
    one_call = ToolChoice("any", parallel=False)
    for _ in range(6):
        req = request(max_tokens=200, temperature=1.0, tool_choice=one_call)
        req.tools = [bounded]
        response = b.complete(req)
        assert b.last_cache_event["constrained"] is True
        assert response.stop_reason == "tool_use" and len(response.tool_uses) == 1
        jsonschema.validate(response.tool_uses[0]["input"], bounded.input_schema)
    # Three of the build's tools: all six overflow the tiny model's 2,048 tokens.
    tools = [t for t in TOOL_SPECS if t.name in ("read_file", "list_files", "finish_phase")]
    schemas = {spec.name: spec.input_schema for spec in tools}
    for _ in range(6):
        req = request(max_tokens=256, temperature=1.0, tool_choice=ToolChoice("any"))
        req.tools = tools
        response = b.complete(req)
        # A call cut by the output limit or the window's end stays text; whole calls are valid.
        cut = ("max_tokens", "model_context_window_exceeded")
        assert response.stop_reason in ("tool_use", *cut)
        assert response.stop_reason in cut or response.tool_uses
        for call in response.tool_uses:
            jsonschema.validate(call["input"], schemas[call["name"]])
    text_only = b.complete(request(max_tokens=30, tool_choice=ToolChoice("none")))
    assert not text_only.tool_uses and "<tool_call>" not in text_only.text


def test_a_gguf_with_a_json_tools_template_gets_native_tool_calls(tiny_model_dir, tmp_path) -> None:
    """A Qwen/Hermes-style template renders the tools itself and the calls are decoded under
    the grammar of its own format; a past call and its result render through it too."""
    import jsonschema

    from foundry.local.tool_grammar import NATIVE_JSON_FORMAT
    from tests.tiny_model import NATIVE_TOOLS_TEMPLATE

    path = write_tiny_gguf(
        tiny_model_dir, tmp_path / "native.gguf", chat_template=NATIVE_TOOLS_TEMPLATE
    )
    b = backend(path, config(tmp_path))
    b.load()
    assert b._renderer.native and b._renderer.call_format == NATIVE_JSON_FORMAT
    first = request(
        max_tokens=200, temperature=1.0, tool_choice=ToolChoice("tool", name="read_file")
    )
    rendered = b._renderer.render(first)
    text = b._loaded.llm.detokenize(rendered.tokens).decode()
    assert '<tools>{"type": "function"' in text and "<tool_call>" in text  # the template's
    assert "## Tool schemas" not in text  # and not foundry's own tool section
    for _ in range(4):
        response = b.complete(first)
        assert b.last_cache_event["constrained"] is True
        assert response.stop_reason == "tool_use"
        assert [c["name"] for c in response.tool_uses] == ["read_file"]
        jsonschema.validate(response.tool_uses[0]["input"], READ.input_schema)
    call = response.tool_uses[0]
    messages = [
        *first.messages,
        Message("assistant", [{"type": "tool_use", **call}]),
        Message(
            "user",
            [{"type": "tool_result", "tool_use_id": call["id"], "content": "hello"}],
        ),
    ]
    after = b._loaded.llm.detokenize(b._renderer.render(request(messages=messages)).tokens)
    assert b'"name": "read_file"' in after and b"<tool_response>\nhello" in after


def test_usage_lands_on_the_ledger_as_a_local_request(gguf, tmp_path) -> None:
    from foundry.ledger import Ledger
    from foundry.timestamps import utc_now

    b = backend(gguf, config(tmp_path))
    usage = b.complete(request()).usage
    with Ledger.open(tmp_path / "l.db") as ledger:
        ledger.record_request(
            build_id=None, phase="scout", turn=1, backend=b.name, model=b.model,
            usage=usage, started_at=utc_now(), local=b.local,
        )  # fmt: skip
        row = ledger.conn.execute(
            "SELECT backend, input_tokens, cache_read_tokens, cache_write_5m_tokens, cost_usd,"
            " pricing_version, prefill_saved_ms FROM requests"
        ).fetchone()
    written = usage.cache_write_5m_tokens
    assert row == ("llamacpp", usage.input_tokens, 0, written, 0.0, "local", 0.0)


def test_the_context_window_is_the_files_capped_by_max_kv_size(gguf, tmp_path) -> None:
    b = backend(gguf, config(tmp_path, models={str(gguf): {"context_window": 64}}))
    b.load()
    assert b.context_window == 2048  # llama.context_length of the tiny GGUF wins
    length = b.count_request_tokens(request())
    failures: list = []
    small = backend(gguf, config(tmp_path, llamacpp={"max_kv_size": length}))
    with pytest.raises(BackendError) as caught:
        small.complete(request(), on_failed_attempt=failures.append)
    assert caught.value.error_class == "context_too_long" and small.context_window == length
    assert [f.error_class for f in failures] == ["context_too_long"]
    assert small._loaded.tokens == []  # refused before any prefill
    roomy = backend(gguf, config(tmp_path, llamacpp={"max_kv_size": length + 3}))
    reply = roomy.complete(request(max_tokens=50))
    assert roomy.last_cache_event["max_tokens"] == 3 and reply.usage.output_tokens <= 3


def test_setup_errors_are_clear(gguf, tmp_path, monkeypatch) -> None:
    from foundry.backends import llamacpp

    with pytest.raises(UsageError, match="--base-url does not apply to the llamacpp backend"):
        backend(gguf, config(tmp_path), base_url="http://127.0.0.1:9/v1")
    with pytest.raises(LocalModelError, match="no GGUF file for local model 'nonesuch'"):
        backend("nonesuch", config(tmp_path)).check()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(LocalModelError, match="cannot read bad.gguf as GGUF"):
        backend(bad, config(tmp_path)).check()
    monkeypatch.setattr(llamacpp, "is_apple_silicon", lambda: False)
    assert llamacpp.LlamaCppBackend.auto_available(config(tmp_path))  # installed here
    monkeypatch.setattr(llamacpp, "is_apple_silicon", lambda: True)
    assert not llamacpp.LlamaCppBackend.auto_available(config(tmp_path))


def test_foundry_serve_serves_it(gguf, tmp_path) -> None:
    """The real server (`foundry serve --backend llamacpp`) and the anthropic SDK over it."""
    from tests.serve_helpers import READ_TOOL, serving, system_blocks

    with serving(gguf, tmp_path / "home", backend="llamacpp") as served:
        client = served.client()
        ask = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 8,
            "system": system_blocks(),
            "tools": [READ_TOOL],
        }
        first = client.messages.create(messages=[{"role": "user", "content": "Hi"}], **ask)
        with client.messages.stream(messages=[{"role": "user", "content": "Go"}], **ask) as s:
            streamed = "".join(s.text_stream)
            second = s.get_final_message()
        assert first.usage.cache_creation_input_tokens > 100
        assert second.usage.cache_read_input_tokens >= first.usage.cache_creation_input_tokens
        assert streamed == "".join(b.text for b in second.content if b.type == "text")
        rows = served.ledger_rows()
        stats = served.stats()
    assert [r["backend"] for r in rows] == ["llamacpp", "llamacpp"]
    assert rows[1]["cache_read_tokens"] == second.usage.cache_read_input_tokens
    assert stats["memory"]["peak_rss_bytes"] > 0 and "mlx_peak_bytes" not in stats["memory"]
    assert stats["l1"]["entries"][0]["tokens"] >= second.usage.cache_read_input_tokens
    assert stats["disk"]["entries"] >= 1


def test_a_bare_gguf_name_is_looked_up_in_the_models_dir_only(gguf, tmp_path, monkeypatch) -> None:
    """A .gguf a model's command wrote in the current directory (a working directory) is not
    what a bare name means; ./NAME.gguf, written as a path, is. The file is checked once."""
    import shutil

    from foundry.config import models_dir
    from foundry.local import llamacpp_models

    shutil.copy(gguf, "planted.gguf")
    with pytest.raises(LocalModelError, match="no GGUF file for local model 'planted.gguf'"):
        backend("planted.gguf", config(tmp_path)).check()
    assert llamacpp_models.find_gguf("planted.gguf") is None
    checked: list[Path] = []
    validate = llamacpp_models.validate_gguf
    monkeypatch.setattr(
        llamacpp_models, "validate_gguf", lambda p: checked.append(p) or validate(p)
    )
    named = backend("./planted.gguf", config(tmp_path))
    named.load()
    named.close()
    assert checked == [Path("planted.gguf")]
    models_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(gguf, models_dir() / "kept.gguf")
    assert llamacpp_models.find_gguf("kept.gguf") == models_dir() / "kept.gguf"
    assert llamacpp_models.find_gguf("kept") == models_dir() / "kept.gguf"


def test_saved_prefill_time_is_never_scaled_up_from_a_shorter_prefix(gguf, tmp_path) -> None:
    """/cache/stats' saved time: the measured prefix's cost covers what it measured; past
    it, tokens count at the fastest prefill rate seen (a 150-token title request's cost,
    scaled 120x, once claimed minutes for an 18k-token conversation read back)."""
    b = backend(gguf, config(tmp_path))
    b._prefix_cost = (150, 600.0)  # a short prefix, measured at 4 ms a token
    b._prefill_rate = 2000.0  # the fastest prefill measured: 0.5 ms a token
    saved = b._saved_ms({"reused": 18_150, "load_ms": 100.0}, None)
    assert saved == pytest.approx(600.0 + 18_000 / 2000.0 * 1000 - 100.0)
    assert b._saved_ms({"reused": 75, "load_ms": 0.0}, None) == pytest.approx(300.0)
    b._prefix_cost, b._prefill_rate = None, None
    assert b._saved_ms({"reused": 500, "load_ms": 0.0}, None) is None  # nothing measured
