"""The llama.cpp engine on a tiny random-weight GGUF: a prefix state restored in another
process gives the logits of a cold run, trimming keeps the KV cache exact, a state that does
not fit is refused, and constrained decoding yields valid calls."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from foundry.backends.base import ToolChoice, ToolSpec
from foundry.local.engine import StepTimes
from foundry.local.tool_calls import parse_tool_calls
from foundry.local.tool_grammar import FALLBACK_FORMAT
from tests.tiny_model import write_tiny_gguf

pytestmark = pytest.mark.llamacpp
TEXT = "You are a careful build orchestrator. Read files, write files, run the tests. " * 6
READ = ToolSpec(
    "read_file",
    "Read a file.",
    {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
)
# Prefill in other chunkings and batch sizes rounds differently; a stale or missing KV entry
# moves these random-weight logits by whole units.
ATOL = 2e-3


@pytest.fixture(scope="module")
def gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def load(path: Path):
    from foundry.local.llamacpp_engine import LlamaCppModel

    return LlamaCppModel(path, "tiny")


def _restore_and_continue(path: str, state_file: str, tokens: list[int], split: int) -> list:
    """In a fresh process: restore the saved prefix as the store reads it (a map of the
    file), feed the rest, return the logits."""
    from foundry.local.llamacpp_store import StateCodec

    model = load(Path(path))
    data, _ = StateCodec.read(Path(state_file))
    assert model.load_state(data, tokens[:split])
    return model.feed(tokens[split:]).tolist()


def test_a_prefix_restored_in_a_new_process_gives_the_cold_logits(gguf, tmp_path) -> None:
    model = load(gguf)
    tokens = model.tokenize(TEXT, add_special=True)
    split = len(tokens) - 7
    cold = model.feed(tokens)
    model.trim(0)
    model.feed(tokens[:split])
    from foundry.local.llamacpp_store import StateCodec

    state_file = tmp_path / "state.safetensors"
    StateCodec.write(state_file, model.save_state(), {"note": "test"})
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        warm = pool.apply(_restore_and_continue, (str(gguf), str(state_file), tokens, split))
    np.testing.assert_allclose(np.array(warm), cold, atol=ATOL)
    assert np.abs(cold).max() > 1  # the comparison means something


def test_trimming_keeps_exactly_the_prefix(gguf) -> None:
    model = load(gguf)
    tokens = model.tokenize(TEXT, add_special=True)
    cold = model.feed(tokens)
    other = model.tokenize(" a different ending", add_special=False)
    model.feed(other)
    model.trim(len(tokens) - 1)
    assert model.tokens == tokens[:-1]
    np.testing.assert_allclose(model.feed(tokens[-1:]), cold, atol=ATOL)


def test_a_state_that_does_not_fit_is_refused(gguf) -> None:
    model = load(gguf)
    tokens = model.tokenize(TEXT, add_special=True)
    model.feed(tokens)
    state = model.save_state()
    assert not model.load_state(state, tokens[:-1])  # holds another number of positions
    assert model.tokens == []
    assert not model.load_state(state[: len(state) // 2], tokens)  # truncated
    assert model.tokens == []
    assert model.load_state(state, tokens) and model.tokens == tokens


def test_constrained_decoding_yields_valid_calls(gguf) -> None:
    """Random weights sampled at temperature 1 (the worst case): with one call allowed and a
    bounded argument, every reply is a complete, valid call that ends the turn."""
    from foundry.local.constrained import ToolConstraint
    from foundry.local.llamacpp_engine import generate_tokens

    bounded = ToolSpec(
        "read_file",
        "Read a file.",
        {
            "type": "object",
            "properties": {"path": {"type": "string", "maxLength": 12}},
            "required": ["path"],
        },
    )
    model = load(gguf)
    grammar = model.grammar_tokenizer()
    prompt = model.tokenize(TEXT, add_special=True)
    for seed in range(8):
        model.trim(0)
        choice = ToolChoice("any", parallel=False)
        constraint = ToolConstraint.for_request(grammar, [bounded], choice, FALLBACK_FORMAT)
        assert constraint is not None
        times = StepTimes()
        out = list(
            generate_tokens(
                model,
                prompt,
                max_tokens=200,
                temperature=1.0,
                times=times,
                constraint=constraint,
                seed=seed,
            )
        )
        # What the context holds is exact: the prompt and every token fed since.
        assert model.tokens == prompt + out[: len(model.tokens) - len(prompt)]
        assert times.ended_on_eos and times.forward_passes < times.generated  # some forced
        text = b"".join(model.piece(t) for t in out).decode("utf-8")
        reply = parse_tool_calls(text, {"read_file"})
        assert len(reply.calls) == 1 and not reply.errors and not reply.text, text
        assert len(reply.calls[0]["input"]["path"]) <= 12


def test_the_state_file_reads_back_exactly_and_a_bad_one_is_refused(gguf, tmp_path) -> None:
    from foundry.local.llamacpp_store import StateCodec

    model = load(gguf)
    tokens = model.tokenize(TEXT, add_special=True)
    model.feed(tokens)
    state = model.save_state()
    # The KV cache's size per position, as /cache/stats reports it, is the state's (its
    # few bytes of bookkeeping aside).
    per_token = model.kv_bytes_per_token()
    assert len(tokens) * per_token <= len(state) < len(tokens) * per_token * 1.01 + 4096
    path = tmp_path / "state.safetensors"
    StateCodec.write(path, state, {"identity": "{}", "kv_crc32": StateCodec.checksum(state)})
    data, meta = StateCodec.read(path)
    assert bytes(data) == bytes(state) and meta["kv_crc32"] == StateCodec.checksum(data)
    data[0] ^= 0xFF  # the map is private: writing to it never reaches the file
    del data
    assert bytes(StateCodec.read(path)[0]) == bytes(state)
    whole = path.read_bytes()
    for name, broken in [
        ("truncated", whole[:-10]),
        ("longer than its header", whole + b"x"),
        ("a header past the end", whole[:12]),
        ("empty", b""),
    ]:
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(broken)
        with pytest.raises((ValueError, OSError)):
            StateCodec.read(bad)


def test_a_q8_0_kv_cache_runs_with_flash_attention(tmp_path) -> None:
    """llama.cpp keeps a quantized V only with flash attention: "auto" turns it on for
    q8_0 (it stays off for f16 on the CPU, where it measured slower), and turning it off
    for q8_0 is refused in the config, by name, before any model loads."""
    from foundry.config import FoundryConfig
    from foundry.errors import ConfigError
    from foundry.local.llamacpp_engine import LlamaCppModel
    from tests.tiny_model import build_tiny_model, write_tiny_gguf

    # q8_0 packs 32 values a block: heads of 32 dimensions (the shared tiny model's are 16).
    directory = build_tiny_model(tmp_path / "model", num_attention_heads=2, num_key_value_heads=1)
    gguf = write_tiny_gguf(directory, tmp_path / "heads32.gguf")
    model = LlamaCppModel(gguf, "tiny", n_ctx=256, kv_type="q8_0")
    assert model.flash_attn
    assert model.feed([1, 2, 3]).shape == (model.n_vocab,)
    model.close()
    assert not LlamaCppModel(gguf, "tiny", n_ctx=256).flash_attn
    with pytest.raises((ConfigError, ValueError), match="flash attention"):
        FoundryConfig.model_validate({"llamacpp": {"kv_type": "q8_0", "flash_attn": "off"}})
