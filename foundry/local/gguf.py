"""Convert a llama-architecture GGUF file into an MLX model directory (foundry models import-gguf).

mx.load reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors arrive as MLX-quantized triples (weight,
scales, biases; group size 32). llama.cpp stores Q/K rows permuted for its interleaved RoPE,
so the MLX llama model runs them with rope_traditional=True instead of un-permuting.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from foundry.errors import LocalModelError, UsageError
from foundry.local.gguf_check import validate_gguf
from foundry.local.model_dirs import (
    Progress,
    check_name,
    install_dir,
    staging_dir,
    write_provenance,
)
from foundry.local.runtime import import_mlx, is_apple_silicon

DTYPES = ("auto", "float32", "float16", "keep")
GGUF_GROUP_SIZE = 32
# general.file_type values we can read (llama.cpp's LLAMA_FTYPE_*).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0"}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|scales|biases)$")
_TOP_RE = re.compile(r"^([a-z_]+)\.(weight|scales|biases)$")


def _scalar(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    return value.item() if hasattr(value, "item") else value


def _one_value(meta: dict[str, Any], key: str, default: Any = None, required: bool = False) -> Any:
    """A field llama.cpp allows per layer (head_count_kv, feed_forward_length): MLX's llama
    takes one value for all layers."""
    value = meta.get(key, default)
    if value is None and required:
        return _required(meta, key)
    if getattr(value, "ndim", 0) and value.size > 1:
        values = set(value.tolist())
        if len(values) > 1:
            raise LocalModelError(
                f"'{key}' differs between layers", "the mlx import takes plain llama models only"
            )
        return values.pop()
    return _scalar(meta, key, default)


def _required(meta: dict[str, Any], key: str) -> Any:
    value = _scalar(meta, key)
    if value is None:
        raise LocalModelError(
            f"the GGUF file has no '{key}' metadata",
            "re-export it with a recent llama.cpp convert script, or use another GGUF",
        )
    return value


def mlx_name(gguf_name: str) -> str:
    if match := _BLOCK_RE.match(gguf_name):
        layer, part, kind = match.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    elif (match := _TOP_RE.match(gguf_name)) and match.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[match.group(1)]}.{match.group(2)}"
    raise LocalModelError(
        f"unexpected tensor '{gguf_name}' in a llama GGUF", "only plain llama models are supported"
    )


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    mx = import_mlx()
    if not path.is_file():
        raise UsageError(f"GGUF file not found: {path}", "check the path")
    validate_gguf(path)  # mlx trusts the header: a crafted one crashes it
    try:
        return mx.load(str(path), return_metadata=True)
    except Exception as exc:  # mlx raises plain RuntimeError/ValueError for unreadable files
        raise LocalModelError(
            f"cannot read {path.name} as GGUF: {exc}",
            "supported: llama-architecture GGUF with Q4_0, Q4_1, Q8_0, F16 or F32 tensors",
        ) from None


def _convert_weights(tensors: dict[str, Any], dtype: str) -> tuple[dict[str, Any], int | None]:
    """GGUF tensors -> MLX names; dequantized unless dtype is 'keep'. Returns (weights, bits)."""
    mx = import_mlx()
    target = {"float32": mx.float32, "float16": mx.float16}.get(dtype)
    out: dict[str, Any] = {}
    bits_seen: set[int] = set()
    for name, value in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue
        base = name.removesuffix(".weight")
        scales = tensors.get(f"{base}.scales")
        if scales is not None:
            in_features = scales.shape[-1] * GGUF_GROUP_SIZE
            bits = value.shape[-1] * 32 // in_features
            if bits not in (4, 8):
                raise LocalModelError(f"unsupported {bits}-bit tensor '{name}'", "use Q4/Q8")
            if target is None:  # keep quantized: MLX infers bits per layer from the shapes
                bits_seen.add(bits)
                out[mlx_name(name)] = value
                out[mlx_name(f"{base}.scales")] = scales
                out[mlx_name(f"{base}.biases")] = tensors[f"{base}.biases"]
                continue
            value = mx.dequantize(
                value, scales, tensors[f"{base}.biases"], group_size=GGUF_GROUP_SIZE, bits=bits
            )
        if not mx.issubdtype(value.dtype, mx.floating):
            raise LocalModelError(
                f"tensor '{name}' has unsupported type {value.dtype}",
                "supported quantizations: Q4_0, Q4_1, Q8_0, F16, F32",
            )
        out[mlx_name(name)] = value.astype(target) if target is not None else value
    return out, (min(bits_seen) if bits_seen else None)


def _model_config(meta: dict[str, Any], weights: dict[str, Any], bits: int | None) -> dict:
    arch = "llama"
    heads = int(_required(meta, f"{arch}.attention.head_count"))
    hidden = int(_required(meta, f"{arch}.embedding_length"))
    if heads <= 0:  # validate_gguf refuses it wherever a layer has attention; none is no llama
        raise LocalModelError(f"{arch}.attention.head_count is {heads}", "use a plain llama")
    vocab = _scalar(meta, f"{arch}.vocab_size") or len(_required(meta, "tokenizer.ggml.tokens"))
    scaling = _scalar(meta, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise LocalModelError(f"RoPE scaling '{scaling}' is not supported", "use a plain llama")
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": int(_one_value(meta, f"{arch}.feed_forward_length", required=True)),
        "num_attention_heads": heads,
        "num_hidden_layers": int(_required(meta, f"{arch}.block_count")),
        "num_key_value_heads": int(_one_value(meta, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(_scalar(meta, f"{arch}.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_scalar(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_scalar(meta, f"{arch}.rope.freq_base", 10000.0)),
        "rope_traditional": True,  # GGUF keeps llama.cpp's Q/K permutation
        "vocab_size": int(vocab),
        "max_position_embeddings": int(_scalar(meta, f"{arch}.context_length", 4096)),
        "tie_word_embeddings": "lm_head.weight" not in weights,
    }
    for key in ("bos_token_id", "eos_token_id"):
        if (value := _scalar(meta, f"tokenizer.ggml.{key}")) is not None:
            config[key] = int(value)
    if bits is not None:
        config["quantization"] = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
    return config


def _write_tokenizer(meta: dict[str, Any], directory: Path) -> None:
    """tokenizer.json (byte-level BPE) + tokenizer_config.json from the GGUF's own metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise LocalModelError(
            f"tokenizer type '{kind}' is not supported",
            "only byte-level BPE ('gpt2') GGUF tokenizers can be converted",
        )
    tokens: list[str] = list(_required(meta, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    try:  # validate_gguf checked the merges; the tokenizers library has rules of its own
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    except Exception as exc:  # it raises a bare Exception
        raise LocalModelError(
            f"the GGUF's tokenizer cannot be rebuilt: {exc}", "re-export the GGUF"
        ) from None
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") == "smollm":  # SmolLM splits digits one by one
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type")
    types = types.tolist() if types is not None else [0] * len(tokens)
    special = [
        t
        for t, k in zip(tokens, types, strict=False)
        if k in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]

    def token(key: str) -> str | None:
        index = _scalar(meta, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    bos, eos = token("bos"), token("eos")
    if bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)) and bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(meta, "llama.context_length", 4096)),
    }
    if template := meta.get("tokenizer.chat_template"):
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")


def resolve_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype '{dtype}'", f"use one of: {', '.join(DTYPES)}")
    if dtype == "auto":  # quantized matmul has no BLAS path on Linux CPU (see docs)
        return "keep" if is_apple_silicon() else "float32"
    return dtype


def import_gguf(
    path: str | Path,
    *,
    name: str | None = None,
    dtype: str = "auto",
    force: bool = False,
    progress: Progress = lambda _message: None,
    source: str | None = None,
) -> Path:
    """Convert `path` into models_dir()/name; returns the installed directory."""
    mx = import_mlx()
    path = Path(path).expanduser()
    resolved = resolve_dtype(dtype)
    name = check_name(name or re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lower())
    progress(f"reading {path.name}")
    tensors, meta = _read(path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise LocalModelError(
            f"architecture '{arch}' is not supported", "only llama-architecture GGUF files import"
        )
    file_type = _scalar(meta, "general.file_type")
    if file_type is not None and int(file_type) not in FILE_TYPES:
        raise LocalModelError(
            f"GGUF file type {file_type} is not supported",
            "supported quantizations: Q4_0, Q4_1, Q8_0, F16, F32",
        )
    progress(f"converting weights ({resolved})")
    weights, bits = _convert_weights(tensors, resolved)
    config = _model_config(meta, weights, bits)
    staging = staging_dir(name)
    try:
        progress("writing the MLX model directory")
        mx.save_safetensors(str(staging / "model.safetensors"), weights, {"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
        _write_tokenizer(meta, staging)
        write_provenance(
            staging,
            source=source or f"gguf:{path.name}",
            gguf_file_type=FILE_TYPES.get(int(file_type)) if file_type is not None else None,
            dtype=resolved,
            quantization=f"{bits}-bit" if bits else None,
        )
        target = install_dir(staging, name, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"imported '{name}' into {target}")
    return target
