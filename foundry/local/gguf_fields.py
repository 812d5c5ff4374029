"""A GGUF's model fields checked against what llama.cpp and mlx survive, before either reads it.

foundry.local.gguf_check proves the header is well formed; this reads what it says. Each
limit is llama.cpp's own (the vendored copy in llama-cpp-python 0.3.36), because llama.cpp
enforces many of them with GGML_ASSERT, which aborts the whole process without a message:
src/llama-hparams.h LLAMA_MAX_LAYERS / LLAMA_MAX_EXPERTS, the asserts in
llama_model::load_hparams (layers, next-n layers, experts, RoPE scaling type) and the one in
llama_vocab::impl::load (a token string that appears twice). mlx has no limits of its own:
the importer writes config.json from these fields and mlx_lm allocates what it says, so a
field that disagrees with the tensors actually in the file is refused too (a 100,000-layer
config over two layers of weights, a 2^30-wide embedding over a 64-wide tensor).

Fields are checked where present: a missing one is named by the engine that needs it.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

LLAMA_MAX_LAYERS = 512  # llama-hparams.h; load_hparams asserts 0 < block_count <= it
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h; load_hparams asserts expert_count <= it
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # others: GGML_ASSERT
# Bounds llama.cpp leaves open, set far above any published model so that only a crafted
# value meets them: the widest embeddings are ~2^14, feed-forward ~2^17, heads 128,
# contexts 10M (Llama 4 Scout), vocabularies 262k (token ids are int32).
MAX_HEADS = 1 << 12
MAX_WIDTH = 1 << 20
MAX_CONTEXT = 1 << 24
MAX_VOCAB = 1 << 24
# Architectures llama.cpp lays out as llama (the tensor shapes below): the mlx import's one
# architecture and its closest relatives.
LLAMA_LAYOUT = ("llama", "qwen2", "qwen3")
_INTS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 10: "Q", 11: "q"}
STRING = 8
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


class GGUFInvalid(ValueError):
    """What is wrong with the file, in a few words."""


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array as the header walk leaves it: its type, length and where it starts."""

    element: int
    length: int
    start: int


def array_ints(data: Any, array: GGUFArray) -> list[int]:
    fmt = _INTS[array.element]
    return list(struct.unpack_from(f"<{array.length}{fmt}", data, array.start))


def array_strings(data: Any, array: GGUFArray) -> list[bytes]:
    """The strings of an array the walk already bounded (each length fits in the file)."""
    out, pos = [], array.start
    for _ in range(array.length):
        (length,) = struct.unpack_from("<Q", data, pos)
        out.append(bytes(data[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    return out


def _int(meta: dict[str, Any], key: str, low: int, high: int, why: str) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise GGUFInvalid(f"{key} is {_show(value)}, not an integer")
    if not low <= value <= high:
        raise GGUFInvalid(f"{key} is {value:,}; {why}")
    return value


def _show(value: Any) -> str:
    return "an array" if isinstance(value, GGUFArray) else repr(value)


def _per_layer(
    data: Any, meta: dict[str, Any], key: str, layers: int, high: int
) -> list[int] | None:
    """A field llama.cpp reads as one value for all layers or an array of one per layer."""
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, GGUFArray):
        single = _int(meta, key, 0, high, f"the most llama.cpp or mlx can use is {high:,}")
        return [single or 0] * layers
    if value.element not in _INTS:
        raise GGUFInvalid(f"{key} is an array of type {value.element}, not of integers")
    if value.length != layers:
        raise GGUFInvalid(f"{key} has {value.length:,} entries for {layers} layers")
    values = array_ints(data, value)
    if bad := [v for v in values if not 0 <= v <= high]:
        raise GGUFInvalid(f"{key} holds {bad[0]:,}; the most llama.cpp or mlx can use is {high:,}")
    return values


def check_fields(data: Any, meta: dict[str, Any], tensors: dict[str, list[int]]) -> None:
    """Raise GGUFInvalid naming the first field an engine would crash or over-allocate on."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return  # llama.cpp and the importer both say when it is missing
    p = f"{arch}."
    layers = _int(
        meta,
        p + "block_count",
        1,
        LLAMA_MAX_LAYERS,
        f"llama.cpp loads 1 to {LLAMA_MAX_LAYERS} layers",
    )
    embd = _int(meta, p + "embedding_length", 1, MAX_WIDTH, f"the limit is {MAX_WIDTH:,}")
    _int(meta, p + "context_length", 1, MAX_CONTEXT, f"the limit is {MAX_CONTEXT:,} tokens")
    scaling = meta.get(p + "rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise GGUFInvalid(
            f"{p}rope.scaling.type is {_show(scaling)}; llama.cpp knows "
            + ", ".join(ROPE_SCALING_TYPES)
        )
    vocab = _check_vocab(data, meta, p)
    if layers is None:
        return
    _int(meta, p + "nextn_predict_layers", 0, layers, f"more than the {layers} layers")
    _experts(data, meta, p, layers)
    heads = _per_layer(data, meta, p + "attention.head_count", layers, MAX_HEADS)
    kv = _per_layer(data, meta, p + "attention.head_count_kv", layers, MAX_HEADS) or heads
    ff = _per_layer(data, meta, p + "feed_forward_length", layers, MAX_WIDTH)
    present = _layers_present(tensors, layers)
    for layer in sorted(present):
        has_attention = any(f"blk.{layer}.{t}.weight" in tensors for t in ("attn_q", "attn_qkv"))
        if heads is not None and kv is not None and has_attention:
            _check_heads(p, layer, heads[layer], kv[layer])
    if arch in LLAMA_LAYOUT:
        if missing := sorted(set(range(layers)) - present):
            raise GGUFInvalid(
                f"{p}block_count is {layers:,} but layer {missing[0]} has no tensors in the file"
            )
        _check_llama_shapes(meta, p, tensors, layers, embd, vocab, heads, kv, ff)


def _experts(data: Any, meta: dict[str, Any], p: str, layers: int) -> None:
    """The expert counts load_hparams asserts on."""
    experts = _int(meta, p + "expert_count", 0, LLAMA_MAX_EXPERTS, "more than llama.cpp allows")
    experts = experts or 0
    used = max(_per_layer(data, meta, p + "expert_used_count", layers, MAX_WIDTH) or [0])
    groups = _int(meta, p + "expert_group_count", 0, MAX_WIDTH, "too many") or 0
    group_used = _int(meta, p + "expert_group_used_count", 0, MAX_WIDTH, "too many") or 0
    if used > experts or (experts and not used):
        raise GGUFInvalid(f"{p}expert_used_count is {used} of {experts} experts")
    if groups and (groups >= experts or experts % groups):
        raise GGUFInvalid(f"{p}expert_group_count is {groups} for {experts} experts")
    if groups > 1 and not 0 < group_used < groups:
        raise GGUFInvalid(f"{p}expert_group_used_count is {group_used} of {groups} groups")


def _layers_present(tensors: dict[str, list[int]], layers: int) -> set[int]:
    present: set[int] = set()
    for name in tensors:
        if match := _LAYER_RE.match(name):
            layer = int(match.group(1))
            if layer >= layers:
                raise GGUFInvalid(f"tensor '{name}' is past the {layers} layers of block_count")
            present.add(layer)
    return present


def _check_heads(p: str, layer: int, heads: int, kv: int) -> None:
    if heads == 0:
        raise GGUFInvalid(f"{p}attention.head_count is 0 for layer {layer}, which has attention")
    if not 0 < kv <= heads or heads % kv:
        raise GGUFInvalid(
            f"{p}attention.head_count_kv is {kv} for layer {layer}: it must divide the "
            f"{heads} attention heads"
        )


def _check_vocab(data: Any, meta: dict[str, Any], p: str) -> int | None:
    """The token list: no string twice (llama.cpp asserts on it), every merge made of two of
    its tokens (the importer's tokenizer refuses anything else), and the special tokens
    llama.cpp must add within it (it asserts on a missing one when it tokenizes)."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    if not isinstance(tokens, GGUFArray) or tokens.element != STRING:
        raise GGUFInvalid("tokenizer.ggml.tokens is not an array of strings")
    n = tokens.length
    if not 1 <= n <= MAX_VOCAB:
        raise GGUFInvalid(f"tokenizer.ggml.tokens has {n:,} tokens (1 to {MAX_VOCAB:,})")
    _int(meta, p + "vocab_size", n, n, f"tokenizer.ggml.tokens has {n:,}")
    ids: dict[bytes, int] = {}
    for index, token in enumerate(array_strings(data, tokens)):
        token = token or f"[EMPTY_{index}]".encode()  # what llama.cpp names an empty one
        if (first := ids.setdefault(token, index)) != index:
            text = token.decode("utf-8", "replace")
            raise GGUFInvalid(f"the token {text!r} appears twice (ids {first} and {index})")
    merges = meta.get("tokenizer.ggml.merges")
    if isinstance(merges, GGUFArray) and merges.element == STRING:
        for index, merge in enumerate(array_strings(data, merges)):
            cut = merge.find(b" ", 1)
            if cut < 0 or merge[:cut] not in ids or merge[cut + 1 :] not in ids:
                text = merge.decode("utf-8", "replace")
                raise GGUFInvalid(f"merge {index} ({text!r}) is not two of the file's {n:,} tokens")
    for part in ("bos", "eos"):
        if meta.get(f"tokenizer.ggml.add_{part}_token") is True:
            token_id = meta.get(f"tokenizer.ggml.{part}_token_id")
            if not isinstance(token_id, int) or not 0 <= token_id < n:
                raise GGUFInvalid(
                    f"tokenizer.ggml.add_{part}_token is set but tokenizer.ggml.{part}_token_id "
                    f"is {_show(token_id)}, not one of the {n:,} tokens"
                )
    return n


def _check_llama_shapes(
    meta: dict[str, Any],
    p: str,
    tensors: dict[str, list[int]],
    layers: int,
    embd: int | None,
    vocab: int | None,
    heads: list[int] | None,
    kv: list[int] | None,
    ff: list[int] | None,
) -> None:
    """Each tensor of the llama layout as wide as the fields say (GGUF lists dims innermost
    first: token_embd is [embedding_length, vocabulary])."""
    if embd is None:
        return
    expected: dict[str, list[int | None]] = {
        "token_embd.weight": [embd, vocab],
        "output.weight": [embd, vocab],
        "output_norm.weight": [embd],
    }
    for layer in range(layers):
        n_head = heads[layer] if heads else 0
        n_kv = kv[layer] if kv else 0
        head_k = _head_dim(meta, p, "key_length", embd, n_head)
        head_v = _head_dim(meta, p, "value_length", embd, n_head)
        if n_head and head_k != head_v and p == "llama.":
            raise GGUFInvalid(f"{p}attention key and value lengths differ ({head_k}, {head_v})")
        rope = _int(meta, p + "rope.dimension_count", 1, head_k or MAX_WIDTH, "wider than a head")
        if n_head and p == "llama." and rope not in (None, head_k):
            raise GGUFInvalid(f"{p}rope.dimension_count is {rope}; a head is {head_k} wide")
        width = ff[layer] if ff else None
        b = f"blk.{layer}."
        # Without a head count (the engine names it missing) attention widths go unchecked.
        n_kv = n_kv if n_head else 0
        expected |= {
            b + "attn_norm.weight": [embd],
            b + "ffn_norm.weight": [embd],
            b + "attn_q.weight": [embd, n_head * head_k or None],
            b + "attn_k.weight": [embd, n_kv * head_k or None],
            b + "attn_v.weight": [embd, n_kv * head_v or None],
            b + "attn_output.weight": [n_head * head_v or None, embd],
            b + "ffn_gate.weight": [embd, width],
            b + "ffn_up.weight": [embd, width],
            b + "ffn_down.weight": [width, embd],
        }
    for name, want in expected.items():
        dims = tensors.get(name)
        if dims is None:
            continue
        if len(dims) != len(want) or any(
            w is not None and d != w for d, w in zip(dims, want, strict=True)
        ):
            shown = ", ".join("?" if w is None else f"{w:,}" for w in want)
            raise GGUFInvalid(
                f"tensor '{name}' is [{', '.join(f'{d:,}' for d in dims)}]; the metadata "
                f"says [{shown}]"
            )


def _head_dim(meta: dict[str, Any], p: str, key: str, embd: int, heads: int) -> int:
    explicit = _int(meta, f"{p}attention.{key}", 1, MAX_WIDTH, f"the limit is {MAX_WIDTH:,}")
    if explicit is not None or not heads:
        return explicit or 0
    if embd % heads:
        raise GGUFInvalid(
            f"{p}embedding_length {embd:,} does not split into {heads} attention heads"
        )
    return embd // heads
