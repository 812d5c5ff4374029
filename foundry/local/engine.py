"""mlx-lm in-process: load a model with its identity, prefill a KV cache, generate tokens.

Kept separate from the backend so the correctness tests can drive prefill directly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from foundry.errors import LocalModelError
from foundry.local.file_hashes import file_hashes
from foundry.local.prefix_store import PrefixIdentity
from foundry.local.runtime import import_mlx, import_mlx_lm, versions

log = logging.getLogger(__name__)
PREFILL_STEP = 512
IDENTITY_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# config.json keys for the context length: llama-style first, then GPT-2's names.
WINDOW_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any  # mlx_lm TokenizerWrapper
    path: Path
    name: str
    config: dict[str, Any]
    kv_dtype: str
    max_kv_size: int | None

    @property
    def config_window(self) -> int | None:
        """The context length config.json declares (multimodal configs nest it in text_config)."""
        for section in (self.config, self.config.get("text_config") or {}):
            for key in WINDOW_KEYS:
                value = section.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None

    @property
    def vocab_size(self) -> int:
        """The width of the model's logits (can exceed the tokenizer's vocabulary)."""
        for section in (self.config, self.config.get("text_config") or {}):
            value = section.get("vocab_size")
            if isinstance(value, int) and value > 0:
                return value
        return len(self.tokenizer.get_vocab())

    def make_cache(self) -> list[Any]:
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.model, max_kv_size=self.max_kv_size)


def load_model(path: Path, name: str, *, kv_dtype: str, max_kv_size: int | None) -> LoadedModel:
    mx = import_mlx()
    mlx_lm = import_mlx_lm()
    try:
        model, tokenizer, config = mlx_lm.load(str(path), return_config=True)
    except Exception as exc:  # mlx-lm raises ValueError/FileNotFoundError/KeyError
        raise LocalModelError(
            f"cannot load the local model at {path}: {exc}", "re-import or re-pull the model"
        ) from None
    if kv_dtype != "auto":
        # The KV values are computed in the model's dtype, so the KV dtype is set through it.
        model.set_dtype(getattr(mx, kv_dtype))
    dtype = kv_dtype if kv_dtype != "auto" else activation_dtype(model)
    return LoadedModel(model, tokenizer, path, name, config, dtype, max_kv_size)


def context_window(
    loaded: LoadedModel, configured: int | None, max_kv_size: int | None
) -> int | None:
    """The tokens one request may hold (prompt + reply): config.json's context length, else the
    configured one, never more than max_kv_size (past it a rotating cache drops old tokens)."""
    return bounded_window(loaded.config_window, configured, max_kv_size)


def bounded_window(
    declared: int | None, configured: int | None, max_kv_size: int | None
) -> int | None:
    """The local engines' one rule: the length the model declares, else the configured one,
    never more than max_kv_size; None when nothing says."""
    window = declared or configured
    if max_kv_size is not None:
        window = min(window, max_kv_size) if window else max_kv_size
    return window


def activation_dtype(model: Any) -> str:
    """The dtype the KV values are computed in: the model's first floating-point parameter's
    (quantized weights are integers; their scales carry it). Works for any architecture."""
    mx = import_mlx()
    from mlx.utils import tree_flatten

    leaves = cast("list[tuple[str, Any]]", tree_flatten(model.parameters()))
    for _, value in leaves:
        if mx.issubdtype(value.dtype, mx.floating):
            return str(value.dtype).removeprefix("mlx.core.")
    return "unknown"


def model_identity(loaded: LoadedModel, memo_file: Path | None = None) -> PrefixIdentity:
    """Everything that shapes the KV values; weight hashes are memoised by size + mtime."""
    files = sorted(loaded.path.glob("*.safetensors")) + [
        loaded.path / n for n in IDENTITY_FILES if (loaded.path / n).is_file()
    ]
    with file_hashes(memo_file) as sha256:
        hashes = {f.name: sha256(f) for f in files}
    fields: dict[str, Any] = {
        "files": hashes,
        "chat_template": hashlib.sha256(
            str(getattr(loaded.tokenizer, "chat_template", "") or "").encode()
        ).hexdigest(),
        "quantization": loaded.config.get("quantization"),
        "kv_dtype": loaded.kv_dtype,
        "max_kv_size": loaded.max_kv_size,
        **versions(),
    }
    return PrefixIdentity(fields=fields, model=loaded.name)


class Cancelled(Exception):
    """The caller asked a running prefill or generation to stop (a client went away)."""


def prefill(
    model: Any,
    cache: list[Any],
    tokens: list[int],
    step: int = PREFILL_STEP,
    *,
    stop: Callable[[], bool] | None = None,
    fed: Callable[[list[int]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Run `tokens` through the model into `cache`; returns the last position's logits.

    `stop()` is asked before each chunk (Cancelled is raised when it says so); `fed(chunk)`
    hears every chunk that entered the cache, so a cancelled prefill leaves a cache whose
    tokens are still known exactly; `progress(n)` hears each chunk's length once it is done
    (between chunks only: what it costs is nothing next to a chunk's forward pass)."""
    mx = import_mlx()
    if not tokens:
        raise ValueError("prefill needs at least one token")
    logits = None
    for start in range(0, len(tokens), step):
        if stop is not None and stop():
            raise Cancelled()
        chunk = tokens[start : start + step]
        logits = model(mx.array(chunk)[None], cache=cache)[:, -1, :]
        mx.eval(logits, [layer.state for layer in cache])
        if fed is not None:
            fed(chunk)
        if progress is not None:
            progress(len(chunk))
    return logits


def sample(logits: Any, temperature: float) -> int:
    mx = import_mlx()
    if temperature <= 0:
        return int(mx.argmax(logits, axis=-1).item())
    return int(mx.random.categorical(logits * (1.0 / temperature)).item())


# A reply whose last LOOP_SPAN tokens repeat one cycle of at most LOOP_PERIOD tokens is
# stuck: greedy decoding of a small model never leaves such a loop, and it would run to
# max_tokens (minutes on a CPU). An array of 32 zeros ("0, 0, ...": 64 tokens) is content.
LOOP_PERIOD = 16
LOOP_SPAN = 128


def looping(tokens: list[int]) -> bool:
    """Whether the last LOOP_SPAN tokens are one short cycle repeated (see LOOP_PERIOD)."""
    if len(tokens) < LOOP_SPAN:
        return False
    tail = tokens[-LOOP_SPAN:]
    return any(tail[period:] == tail[:-period] for period in range(1, LOOP_PERIOD + 1))


@dataclass
class StepTimes:
    prefill_s: float = 0.0
    first_token_s: float = 0.0
    generate_s: float = 0.0
    generated: int = 0
    ended_on_eos: bool = False  # False: stopped by max_tokens
    forward_passes: int = 0  # decode steps; fewer than tokens when a grammar forced some
    looped: bool = False  # stopped early: the reply was repeating itself
    wound_up: bool = False  # a loop inside a call: the call was steered to its end


class TokenPicker:
    """Samples the next token, within a grammar's mask when the reply is constrained.

    A grammar that fails mid-reply (it should not: only allowed tokens are sampled) is
    dropped with a warning, and the reply goes on unconstrained rather than failing."""

    def __init__(self, temperature: float, constraint: Any = None) -> None:
        self.temperature = temperature
        self.constraint = constraint  # a foundry.local.constrained.ToolConstraint, or None

    @property
    def finished(self) -> bool:
        return self.constraint is not None and self.constraint.finished

    def pick(self, logits: Any) -> int | None:
        """The next token, or None when the grammar allows none (the reply is complete)."""
        if self.constraint is None:
            return sample(logits, self.temperature)
        mx = import_mlx()
        allowed = self.constraint.allowed()
        if not allowed.any():
            return None
        return sample(mx.where(mx.array(allowed), logits, -mx.inf), self.temperature)

    def wind_up(self) -> bool:
        """Steer a constrained reply to the end of its call; False if it cannot."""
        return self.constraint is not None and bool(self.constraint.wind_up())

    def accept(self, token: int) -> list[int]:
        """Tell the grammar what was sampled; returns the tokens it forces next."""
        if self.constraint is None:
            return []
        try:
            return list(self.constraint.accept(token))
        except ValueError as exc:
            log.warning("constrained decoding stopped: %s", exc)
            self.constraint = None
            return []


def generate_tokens(
    loaded: LoadedModel,
    cache: list[Any],
    new_tokens: list[int],
    *,
    max_tokens: int,
    temperature: float,
    times: StepTimes,
    fed: Callable[[int], None],
    stop: Callable[[], bool] | None = None,
    constraint: Any = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[int]:
    """Prefill `new_tokens`, then decode (see `decode`) with mlx.

    `fed(token)` is called for every token that enters the KV cache, so the caller always
    knows exactly which tokens the cache holds. `stop()` is asked between prefill chunks
    (Cancelled is raised); between generated tokens the caller stops by closing the
    iterator. `progress(n)` hears the prefill's chunks only, never a decoded token.
    """
    mx = import_mlx()
    eos = set(loaded.tokenizer.eos_token_ids)
    picker = TokenPicker(temperature, constraint)
    started = time.perf_counter()

    def fed_chunk(chunk: list[int]) -> None:
        for token in chunk:
            fed(token)

    def forward(step: list[int]) -> Any:
        logits = loaded.model(mx.array([step]), cache=cache)[:, -1, :]
        fed_chunk(step)
        return logits

    logits = prefill(loaded.model, cache, new_tokens, stop=stop, fed=fed_chunk, progress=progress)
    times.prefill_s = time.perf_counter() - started
    token = picker.pick(logits)
    times.first_token_s = time.perf_counter() - started
    yield from decode(
        token, picker, is_end=eos.__contains__, forward=forward, max_tokens=max_tokens, times=times
    )


def decode(
    token: int | None,
    picker: Any,
    *,
    is_end: Callable[[int], bool],
    forward: Callable[[list[int]], Any],
    max_tokens: int,
    times: StepTimes,
) -> Iterator[int]:
    """Yield tokens from the first sampled one until an end token, max_tokens, the end of
    what the picker's grammar allows, or a loop (see `looping`); engine-neutral.

    `picker` samples (`pick(logits)`, None when the grammar is complete) and knows the
    grammar (`accept`, `finished`, `wind_up`: a TokenPicker, or an engine's own). Tokens the
    grammar forces are yielded like sampled ones and go to `forward(step)` together, in one
    pass; `forward` feeds a step to the model and returns the next logits. A loop inside a
    constrained call first winds the call up (see ToolConstraint.wind_up); a second stops.
    """
    gen_started = time.perf_counter()
    reply: list[int] = []
    while times.generated < max_tokens:
        if token is None:  # the grammar is complete
            times.ended_on_eos = True
            break
        if is_end(token):
            times.generated += 1
            times.ended_on_eos = True
            break
        whole = [token, *picker.accept(token)]
        step = whole[: max_tokens - times.generated]
        for each in step:
            times.generated += 1
            yield each
        if picker.finished and len(step) == len(whole):  # else the limit cut the call short
            times.ended_on_eos = True
            break
        reply += step
        if looping(reply):
            if picker.wind_up():
                times.wound_up = True
                reply = []
            else:
                times.looped = True
                break
        if times.generated >= max_tokens:
            break
        logits = forward(step)
        times.forward_passes += 1
        token = picker.pick(logits)
    times.generate_s = time.perf_counter() - gen_started
