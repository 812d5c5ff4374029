"""The model's context window: the MLX backend never runs a model past it, and the
orchestrator ends a phase whose conversation outgrew it the way a turn limit ends it."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry.backends.base import ModelRequest
from foundry.config import FoundryConfig
from tests.orchestrator_helpers import context_too_long, finish, ledger_rows, run_build, tool
from tests.test_mlx_backend import _scripted, backend, config, request
from tests.test_orchestrator import TEST_CMD, happy_steps
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


# -- the MLX backend -----------------------------------------------------------------------


def _prompt_length(model_dir, tmp_path, req: ModelRequest) -> int:
    b = backend(model_dir, config(tmp_path))
    b._ensure_loaded()
    return len(b._renderer.render(req).tokens)


@pytest.mark.mlx
def test_the_reply_is_capped_to_the_room_left_in_the_context_window(model_dir, tmp_path) -> None:
    length = _prompt_length(model_dir, tmp_path, request(max_tokens=8))
    small = build_tiny_model(tmp_path / "small", max_position_embeddings=length + 3)
    b = backend(small, config(tmp_path))
    response = b.complete(request(max_tokens=8))
    assert b.context_window == length + 3 and b.last_cache_event["max_tokens"] == 3
    # The window, not the request's max_tokens, ended the reply, and the stop reason says so.
    assert response.usage.output_tokens == 3
    assert response.stop_reason == "model_context_window_exceeded"
    assert response.usage.total_input_tokens == length
    assert len(b._cache_tokens) <= length + 3


@pytest.mark.mlx
def test_a_prompt_with_no_room_fails_before_any_prefill(model_dir, tmp_path) -> None:
    from foundry.errors import BackendError

    length = _prompt_length(model_dir, tmp_path, request())
    # max_kv_size caps the window below config.json's 2,048 tokens.
    cfg = FoundryConfig.model_validate(
        {"prefix_cache": {"dir": str(tmp_path / "store")}, "mlx": {"max_kv_size": length}}
    )
    b = backend(model_dir, cfg)
    failures = []
    with pytest.raises(BackendError) as caught:
        b.complete(request(), on_failed_attempt=failures.append)
    error = caught.value
    assert error.error_class == "context_too_long" and b.context_window == length
    assert f"{length:,} tokens" in error.message and "context window" in error.message
    assert error.hint and "--max-turns" in error.hint
    assert [f.error_class for f in failures] == ["context_too_long"]
    assert failures[0].usage.total_input_tokens == 0
    assert b._cache is None and not list((tmp_path / "store").glob("*.safetensors"))
    # One token of room is enough for a one-token reply.
    cfg.mlx.max_kv_size = length + 1
    fits = backend(model_dir, cfg).complete(request())
    assert fits.usage.output_tokens == 1
    assert fits.stop_reason == "model_context_window_exceeded"


@pytest.mark.mlx
def test_a_repair_that_would_not_fit_returns_the_text_as_is(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    seen = _scripted(b, ['<tool_call>{"name": "read_file", "arguments": {path: a}}</tool_call>'])
    b._context_window = len(b._renderer.render(request()).tokens) + 4  # too small for a repair
    response = b.complete(request())
    assert len(seen) == 1 and response.stop_reason == "end_turn"
    assert response.text.startswith("<tool_call>")


@pytest.mark.mlx
def test_the_context_window_comes_from_config_json_then_cache_config() -> None:
    from pathlib import Path

    from foundry.local.engine import LoadedModel, context_window

    def loaded(config: dict) -> LoadedModel:
        return LoadedModel(None, None, Path("."), "m", config, "float32", None)

    llama = loaded({"max_position_embeddings": 8192})
    assert context_window(llama, None, None) == 8192
    assert context_window(llama, 4096, None) == 8192  # the model's own figure wins
    assert context_window(llama, None, 2048) == 2048  # never past max_kv_size
    assert context_window(loaded({"n_positions": 1024}), None, None) == 1024
    assert context_window(loaded({"text_config": {"max_position_embeddings": 512}}), 9, None) == 512
    unknown = loaded({"hidden_size": 64})
    assert context_window(unknown, 4096, None) == 4096
    assert context_window(unknown, None, 1000) == 1000
    assert context_window(unknown, None, None) is None


@pytest.mark.mlx
def test_a_model_without_a_declared_window_uses_cache_config(
    model_dir, tmp_path, monkeypatch
) -> None:
    import foundry.local.engine as engine

    cfg = FoundryConfig.model_validate(
        {
            "prefix_cache": {"dir": str(tmp_path / "store")},
            "models": {str(model_dir): {"context_window": 64}},
        }
    )
    declared = backend(model_dir, cfg)
    declared._ensure_loaded()
    assert declared.context_window == 2048  # config.json declares one: it wins
    real_load = engine.load_model

    def load_without_window(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loaded.config.pop("max_position_embeddings")
        return loaded

    monkeypatch.setattr(engine, "load_model", load_without_window)
    b = backend(model_dir, cfg)
    b._ensure_loaded()
    assert b.context_window == 64


# -- the orchestrator ------------------------------------------------------------------------


def test_a_conversation_past_the_context_window_ends_its_phase_like_a_turn_limit(
    tmp_path: Path,
) -> None:
    steps = [
        ([tool("list_files")], "tool_use"),
        ([tool("list_files")], "tool_use"),
        *context_too_long(),  # scout turn 3 no longer fits
        ([finish("one module", "# Arch\n", test_command=TEST_CMD)], "tool_use"),
    ]
    result, backend, db = run_build(tmp_path, steps, phases=("scout", "architect"))
    assert result.status == "incomplete", result.error
    assert result.phases["scout"].status == "turn_limit" and result.phases["scout"].turns == 2
    report = (tmp_path / "hello" / ".foundry" / "scout-report.md").read_text()
    assert "context window at turn 3" in report
    # The next phase starts a fresh conversation, which fits again.
    assert len(backend.requests[-1].messages) == 1 and "architect" in str(
        backend.requests[-1].messages[0].content
    )
    rows = [
        (r["phase"], r["turn"], r["status"], r["error_class"]) for r in ledger_rows(db, "requests")
    ]
    assert rows == [
        ("scout", 1, "ok", None),
        ("scout", 2, "ok", None),
        ("scout", 3, "error", "context_too_long"),
        ("architect", 1, "ok", None),
    ]


def test_a_first_turn_past_the_context_window_fails_the_build(tmp_path: Path) -> None:
    result, _, db = run_build(tmp_path, context_too_long(), phases=("scout", "architect"))
    assert result.status == "failed" and "8,505 tokens" in (result.error or "")
    assert result.phases["scout"].status == "failed"
    assert ledger_rows(db, "builds")[0]["status"] == "failed"


def test_a_fix_round_past_the_context_window_reruns_the_tests(tmp_path: Path) -> None:
    steps = happy_steps("def greet():\n    return 'HELLO'\n") + [
        ([tool("read_file", path="hello.py")], "tool_use"),
        *context_too_long(),
        ([tool("edit_file", path="hello.py", old_text="'HELLO'", new_text="'hello'")], "tool_use"),
        ([finish("fixed the case", "fixed")], "tool_use"),
    ]
    result, backend, _ = run_build(tmp_path, steps)
    assert result.status == "completed", result.error
    assert [r["passed"] for r in result.summary["test_runs"]] == [False, False, True]
    fresh = backend.requests[-2].messages
    assert len(fresh) == 1 and "## Test run 2 failed" in fresh[0].content[0]["text"]
