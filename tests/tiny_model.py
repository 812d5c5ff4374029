"""A tiny random-weight llama model directory that mlx_lm.load reads, built in well under a second.

config.json + model.safetensors + tokenizer.json (byte-level BPE trained with `tokenizers`)
+ tokenizer_config.json with a ChatML chat template, like SmolLM2's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "You are a careful build orchestrator. Read files, write files, run the tests.",
    "def add(a, b):\n    return a + b\n",
    'The tool call format is <tool_call>{"name": "read_file", "arguments": {"path": "x"}}',
    "system user assistant tool result phase scout architect builder test deploy",
    "The quick brown fox jumps over the lazy dog. 0123456789 {}[]():;,.'\"",
]


def build_tokenizer(directory: Path, vocab_size: int = 384) -> int:
    """Write tokenizer.json and return the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    return tokenizer.get_vocab_size()


def tiny_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab_size,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


def build_tiny_model(
    directory: Path,
    *,
    seed: int = 0,
    chat_template: str = CHATML_TEMPLATE,
    sharp: bool = True,
    **overrides: Any,
) -> Path:
    """Create the model directory (random weights from `seed`) and return it. `sharp=False`
    keeps the default small embeddings: nearly flat logits, so sampling wanders widely."""
    from foundry.local.runtime import import_mlx

    mx = import_mlx()
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = build_tokenizer(directory)
    config = tiny_config(vocab_size, **overrides)
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # Larger-than-default embeddings make the logits differ clearly between tokens.
    weights = dict(tree_flatten(model.parameters()))
    if sharp:
        weights["model.embed_tokens.weight"] = mx.random.normal(
            weights["model.embed_tokens.weight"].shape
        )
    return _write_model_dir(directory, weights, config, chat_template)


def build_tiny_gpt2(directory: Path, *, seed: int = 0) -> Path:
    """A tiny GPT-2: an architecture whose layers name their parts differently from llama's."""
    from foundry.local.runtime import import_mlx

    mx = import_mlx()
    from mlx.utils import tree_flatten
    from mlx_lm.models import gpt2

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 32,
        "n_head": 2,
        "n_layer": 2,
        "n_positions": 1024,
        "layer_norm_epsilon": 1e-5,
        "vocab_size": build_tokenizer(directory),
        "eos_token_id": 2,
    }
    mx.random.seed(seed)
    model = gpt2.Model(gpt2.ModelArgs.from_dict(config))
    return _write_model_dir(directory, dict(tree_flatten(model.parameters())), config)


def _write_model_dir(
    directory: Path,
    weights: dict[str, Any],
    config: dict[str, Any],
    chat_template: str = CHATML_TEMPLATE,
) -> Path:
    from foundry.local.runtime import import_mlx

    import_mlx().save_safetensors(str(directory / "model.safetensors"), weights, {"format": "mlx"})
    (directory / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), "utf-8")
    return directory


def _permute_for_gguf(weight: Any, n_head: int) -> Any:
    """llama.cpp's Q/K row permutation (convert_hf_to_gguf.py LlamaModel.permute)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(
    model_dir: Path,
    path: Path,
    *,
    dtype: str = "float32",
    architecture: str = "llama",
    tokenizer_model: str = "gpt2",
    drop: tuple[str, ...] = (),
    chat_template: str | None = None,
    meta: dict[str, Any] | None = None,
    n_tokens: int | None = None,
) -> Path:
    """Write the tiny model as a llama GGUF the way llama.cpp's converter lays it out.
    `meta` replaces metadata values (ints become u32, a list of ints an i32 array, a function
    gets the converter's value) and
    `n_tokens` keeps only that many tokens (and embedding rows), as a crafted file would."""
    from foundry.local.runtime import import_mlx

    mx = import_mlx()
    config = json.loads((model_dir / "config.json").read_text())
    weights = mx.load(str(model_dir / "model.safetensors"))
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    tensors = {}
    for name, value in weights.items():
        if name == "model.embed_tokens.weight":
            key = "token_embd.weight"
        elif name == "model.norm.weight":
            key = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module = rest.removesuffix(".weight")
            key = f"blk.{layer}.{names[module]}.weight"
            if module == "self_attn.q_proj":
                value = _permute_for_gguf(value, config["num_attention_heads"])
            elif module == "self_attn.k_proj":
                value = _permute_for_gguf(value, config["num_key_value_heads"])
        if key == "token_embd.weight" and n_tokens is not None:
            value = value[:n_tokens]  # the embedding still matches the vocabulary
        tensors[key] = value.astype(getattr(mx, dtype))
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])][:n_tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    u32 = mx.uint32
    metadata = {
        "general.architecture": architecture,
        "general.file_type": mx.array(0 if dtype == "float32" else 1, dtype=u32),
        "llama.embedding_length": mx.array(config["hidden_size"], dtype=u32),
        "llama.feed_forward_length": mx.array(config["intermediate_size"], dtype=u32),
        "llama.block_count": mx.array(config["num_hidden_layers"], dtype=u32),
        "llama.attention.head_count": mx.array(config["num_attention_heads"], dtype=u32),
        "llama.attention.head_count_kv": mx.array(config["num_key_value_heads"], dtype=u32),
        "llama.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"]),
        "llama.rope.freq_base": mx.array(config["rope_theta"]),
        "llama.context_length": mx.array(config["max_position_embeddings"], dtype=u32),
        "llama.vocab_size": mx.array(len(tokens), dtype=u32),
        "tokenizer.ggml.model": tokenizer_model,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array(
            [3 if t in SPECIAL_TOKENS else 1 for t in tokens], dtype=mx.int32
        ),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=u32),
        "tokenizer.ggml.eos_token_id": mx.array(2, dtype=u32),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": chat_template or CHATML_TEMPLATE,
    }
    for key in drop:  # as a damaged or incomplete export would be
        del metadata[key]
    for key, value in (meta or {}).items():
        if callable(value):  # a function of the value the converter would write
            value = value(metadata[key])
        if isinstance(value, bool):
            value = mx.array(value)
        elif isinstance(value, int):
            value = mx.array(value, dtype=u32)
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            value = mx.array(value, dtype=mx.int32)
        metadata[key] = value
    mx.save_gguf(str(path), tensors, metadata)
    return path


# A Qwen/Hermes-style template with native tools: mlx-lm picks its "json_tools" parser
# (<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>) for it.
NATIVE_TOOLS_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'system' and tools %}"
    "{{ message['content'] + '\n<tools>' }}"
    "{% for tool in tools %}{{ tool | tojson }}{% endfor %}"
    '{{ \'</tools>\nCall a tool as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>\' }}'
    "{% elif message['role'] == 'assistant' and message.tool_calls %}"
    "{{ message['content'] }}"
    "{% for call in message.tool_calls %}{% set tool_call = call.function %}"
    '{{ \'<tool_call>\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{{ tool_call.arguments | tojson }}{{ '}\n</tool_call>' }}"
    "{% endfor %}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
