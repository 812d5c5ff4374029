"""GGUF import: a GGUF written the way llama.cpp lays it out imports into an equivalent model."""

from __future__ import annotations

import json

import pytest

from foundry.config import models_dir
from foundry.errors import LocalModelError, UsageError
from foundry.local.gguf import import_gguf
from tests.tiny_model import write_tiny_gguf

pytestmark = pytest.mark.mlx


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_model_dir


def _logits(path, tokens):
    from foundry.local.runtime import import_mlx

    mx = import_mlx()
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(path))
    return model(mx.array(tokens)[None]), tokenizer


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_imported_gguf_computes_what_the_original_computes(tiny, tmp_path, dtype) -> None:
    import numpy as np

    gguf = write_tiny_gguf(tiny, tmp_path / "tiny.gguf", dtype=dtype)
    target = import_gguf(gguf, name="tiny", dtype="float32")
    assert target == models_dir() / "tiny"
    config = json.loads((target / "config.json").read_text())
    assert config["rope_traditional"] is True and config["tie_word_embeddings"] is True
    tokens = [5, 17, 99, 3, 250, 41, 7, 8, 9, 10, 11]
    expected, original_tok = _logits(tiny, tokens)
    got, imported_tok = _logits(target, tokens)
    atol = 1e-4 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=atol, rtol=atol)
    # The tokenizer rebuilt from GGUF metadata tokenizes and templates like the original.
    text = "def add(a, b):\n    return a + b  <|im_end|> 2024"
    assert imported_tok.encode(text) == original_tok.encode(text)
    chat = [{"role": "system", "content": "hi"}, {"role": "user", "content": "yo"}]
    assert imported_tok.apply_chat_template(chat, tokenize=False) == (
        original_tok.apply_chat_template(chat, tokenize=False)
    )
    assert imported_tok.eos_token_ids == {2}
    provenance = json.loads((target / "foundry.json").read_text())
    assert provenance["dtype"] == "float32" and provenance["gguf_file_type"] in ("F32", "F16")


def test_keep_dtype_keeps_float16_weights(tiny, tmp_path) -> None:
    from foundry.local.runtime import import_mlx

    mx = import_mlx()
    target = import_gguf(write_tiny_gguf(tiny, tmp_path / "t.gguf", dtype="float16"), dtype="keep")
    assert target.name == "t"
    weights = mx.load(str(target / "model.safetensors"))
    assert weights["model.layers.0.self_attn.q_proj.weight"].dtype == mx.float16


def test_existing_name_needs_force_and_writes_are_atomic(tiny, tmp_path) -> None:
    gguf = write_tiny_gguf(tiny, tmp_path / "tiny.gguf")
    import_gguf(gguf, name="m")
    with pytest.raises(LocalModelError, match="already exists"):
        import_gguf(gguf, name="m")
    import_gguf(gguf, name="m", force=True)
    assert sorted(p.name for p in models_dir().iterdir()) == ["m"]  # no staging dirs left


def test_unsupported_architecture_and_tokenizer_are_clear_errors(tiny, tmp_path) -> None:
    qwen = write_tiny_gguf(tiny, tmp_path / "q.gguf", architecture="qwen2")
    with pytest.raises(LocalModelError, match="architecture 'qwen2' is not supported"):
        import_gguf(qwen)
    spm = write_tiny_gguf(tiny, tmp_path / "s.gguf", tokenizer_model="llama")
    with pytest.raises(LocalModelError, match="tokenizer type 'llama'"):
        import_gguf(spm)
    assert not any(models_dir().iterdir())  # a failed import leaves nothing behind


@pytest.mark.parametrize("key", ["llama.attention.head_count", "tokenizer.ggml.tokens"])
def test_missing_metadata_is_a_clear_error(tiny, tmp_path, key) -> None:
    gguf = write_tiny_gguf(tiny, tmp_path / "m.gguf", drop=(key, "llama.vocab_size"))
    with pytest.raises(LocalModelError, match=f"has no '{key}' metadata"):
        import_gguf(gguf)
    assert not models_dir().exists() or not any(models_dir().iterdir())


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(UsageError, match="not found"):
        import_gguf(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a GGUF file at all")
    with pytest.raises(LocalModelError, match="cannot read junk.gguf"):
        import_gguf(junk)
    with pytest.raises(UsageError, match="--dtype"):
        import_gguf(junk, dtype="int3")
