"""llama.cpp in-process (llama-cpp-python): load a GGUF, prefill and decode one sequence, and
save or restore the KV state of a token prefix as bytes.

State it owns: one llama.cpp context holding one sequence (seq 0), and exactly the token ids
its KV cache holds (`tokens`), so a caller can keep the longest common prefix of the next
prompt and drop the rest. Logits come back as numpy arrays, so a grammar mask applies to
them as it does for mlx. Only this module and its llamacpp_* siblings import llama_cpp.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from foundry.errors import LocalModelError, install_hint
from foundry.local.engine import Cancelled, StepTimes, TokenPicker, decode
from foundry.local.llamacpp_layout import state_buffer
from foundry.local.llamacpp_threads import ContextThreads

PREFILL_STEP = 512  # tokens per llama_decode call while prefilling (llama.cpp's default batch)
SEQ = 0  # the one sequence a context holds
# KV cache element types foundry offers (llama.cpp's GGML_TYPE_* numbers); f16 is the default.
KV_TYPES = {"f16": 1, "f32": 0, "q8_0": 8}
KV_ELEMENT_BYTES = {"f16": 2.0, "f32": 4.0, "q8_0": 34 / 32}  # q8_0: 32 values in 34 bytes
INSTALL_HINT = install_hint("llamacpp", env="CMAKE_ARGS=-DLLAVA_BUILD=OFF ") + (
    " (it compiles llama.cpp with cmake and a C++ compiler: about 3.5 minutes on 2 cores)"
)


LOG_ERROR, LOG_CONT = 4, 5  # ggml_log_level: ERROR, and "continues the previous line"
_GENERIC = ("failed to load model", "failed to create context")  # after the line saying why


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise LocalModelError("llama-cpp-python is not installed", INSTALL_HINT) from None
    except (OSError, RuntimeError) as exc:  # installed, but its shared library will not load
        raise LocalModelError(
            f"llama-cpp-python is installed but cannot load llama.cpp: {exc}",
            f"reinstall it with pip install --force-reinstall --no-cache-dir; {INSTALL_HINT}",
        ) from None
    _report_aborts(llama_cpp)
    return llama_cpp


_abort_handler: Any = None  # the installed ctypes callback (kept alive), once per process


def _report_aborts(llama_cpp: Any) -> None:
    """A GGML_ASSERT anywhere in llama.cpp ends the process with abort(); llama-cpp-python
    even sends stderr to /dev/null while a model loads, so it died with no word (exit 134).
    ggml calls this hook with its message first: it becomes foundry's one red line and exit
    status 1. The process still ends: the C stack cannot be unwound back into Python.
    gguf_fields refuses the files known to reach an assert; this is for the rest."""
    global _abort_handler
    if _abort_handler is not None:
        return
    # The copy libllama linked (wheels hold copies, not links, under several names): with
    # RTLD_NOLOAD a name that is not loaded fails instead of loading a second, unused copy.
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    mode = getattr(os, "RTLD_NOLOAD", 0)
    for name in ("libggml-base.so.0", "libggml-base.so", "libggml-base.dylib"):
        try:
            setter = ctypes.CDLL(str(lib_dir / name), mode=mode).ggml_set_abort_callback
            break
        except (OSError, AttributeError):  # another layout or an older ggml: keep its own
            continue
    else:
        return
    # fd 2 as it is now: while a model loads, fd 2 and sys.stderr point at /dev/null (and
    # sys.stderr may be no file at all, as under click's CliRunner).
    try:
        stream = os.fdopen(os.dup(2), "w", closefd=True)
    except OSError:
        return

    def on_abort(message: bytes | None) -> None:
        from foundry import console

        text = (message or b"").decode("utf-8", "replace").strip()
        text = re.sub(r"^\S*/", "", text)  # the source file's name, not the build's path
        sys.stderr, sys.stdout = stream, stream
        console.error(
            f"llama.cpp stopped: {text} — the model file or its settings are outside what "
            "llama.cpp supports: use another GGUF, or report this line"
        )
        stream.flush()
        os._exit(1)

    _abort_handler = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(on_abort)
    setter.restype = ctypes.c_void_p
    setter.argtypes = [ctypes.c_void_p]
    setter(ctypes.cast(_abort_handler, ctypes.c_void_p))


class LoadLog:
    """llama.cpp's own error lines while a model loads. llama-cpp-python raises only "Failed
    to load model from file"; the reason (a tensor's wrong shape, a failed allocation) is in
    llama.cpp's log, which it silences. Replaces its log callback for the duration."""

    def __init__(self, llama_cpp: Any) -> None:
        self._lib = llama_cpp
        self.lines: list[str] = []
        self._continues = False
        self._callback = llama_cpp.llama_log_callback(self._record)  # alive while installed

    def _record(self, level: int, text: bytes | None, _data: Any) -> None:
        piece = (text or b"").decode("utf-8", "replace")
        if level == LOG_ERROR:
            self.lines.append(piece)
        elif level == LOG_CONT and self._continues:
            self.lines[-1] += piece
        self._continues = level == LOG_ERROR or (level == LOG_CONT and self._continues)

    def __enter__(self) -> LoadLog:
        self._lib.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *_exc: object) -> None:
        from llama_cpp import _logger  # llama-cpp-python's own callback, as it installs it

        self._lib.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def reason(self) -> str | None:
        """The last error line that says why, whitespace folded."""
        lines = [" ".join(line.split()) for line in self.lines]
        for line in reversed(lines):
            if line and not line.endswith(_GENERIC):
                return line
        return lines[-1] if lines else None


def default_threads() -> int:
    """The cores this process may use: llama-cpp-python's own default decodes on half."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def use_flash_attention(setting: str, kv_type: str) -> bool:
    """Whether a context runs flash attention. llama-server's `-fa auto` turns it on for the
    CPU; measured here on the CPU (2 cores, bench/flash_attention_bench.py) it made decode
    1.33x and a warm turn 2.2x slower for a 0.94x prefill at 3k tokens, so "auto" leaves
    it off, except for a q8_0 KV cache, whose quantized V llama.cpp keeps only with it."""
    if setting == "auto":
        return kv_type == "q8_0"
    return setting == "on"


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = (logits - np.max(logits)) / temperature
    weights = np.exp(scaled, dtype=np.float64)
    return int(rng.choice(len(weights), p=weights / weights.sum()))


class NumpyPicker(TokenPicker):
    """foundry's token picker (grammar bookkeeping included) over numpy logits."""

    def __init__(self, temperature: float, constraint: Any = None, seed: int | None = None):
        super().__init__(temperature, constraint)
        self.rng = np.random.default_rng(seed)

    def pick(self, logits: Any) -> int | None:
        if self.constraint is not None:
            allowed = self.constraint.allowed()
            if not allowed.any():
                return None
            logits = np.where(allowed[: len(logits)], logits, -np.inf)
        return sample(logits, self.temperature, self.rng)


class Detokenizer:
    """Streams text token by token; a character split across tokens waits for its last byte."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self.piece = piece
        self.last_segment = ""
        self.reset()

    def reset(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.last_segment = ""

    def add_token(self, token: int) -> None:
        self.last_segment = self._decoder.decode(self.piece(token))

    def finalize(self) -> None:
        self.last_segment = self._decoder.decode(b"", final=True)


class LlamaCppModel:
    """A GGUF loaded into one llama.cpp context of `n_ctx` tokens (None: the file's length)."""

    def __init__(
        self,
        path: Path,
        name: str,
        *,
        n_ctx: int | None = None,
        kv_type: str = "f16",
        threads: int | None = None,
        flash_attn: str = "auto",
    ) -> None:
        llama_cpp = import_llama_cpp()
        self._lib = llama_cpp
        self.path, self.name, self.kv_type = path, name, kv_type
        self.flash_attn = use_flash_attention(flash_attn, kv_type)
        cores = default_threads()
        log = LoadLog(llama_cpp)
        try:
            with log:
                self.llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx or 0,  # 0: the context length the GGUF declares
                    n_batch=PREFILL_STEP,
                    n_threads=threads or cores,
                    n_threads_batch=threads or cores,
                    type_k=KV_TYPES[kv_type],
                    type_v=KV_TYPES[kv_type],
                    flash_attn=self.flash_attn,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:  # what llama-cpp-python raises on a bad file
            said = f" (llama.cpp: {reason})" if (reason := log.reason()) else ""
            raise LocalModelError(
                f"llama.cpp cannot load {path}: {exc}{said}",
                "check that the file is a GGUF model; if memory ran out, set llamacpp.max_kv_size "
                "(the KV buffer of the whole context is allocated when the model loads)",
            ) from None
        # None: this process's fair share of the cores, fitted before each request.
        self.threads = ContextThreads(llama_cpp, self.llm.ctx, cores=cores, fixed=threads)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = int(self.llm.n_ctx())  # what the KV buffer holds (llama.cpp pads it)
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.llm.model))
        self.metadata: dict[str, str] = dict(self.llm.metadata)
        self.tokens: list[int] = []  # exactly what the KV cache of SEQ holds
        self.detokenizer = Detokenizer(self.piece)
        self._piece_buffer = ctypes.create_string_buffer(256)

    @property
    def version(self) -> str:
        return str(self._lib.__version__)

    # -- the vocabulary ----------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """Token ids of `text`; special tokens in it (<|im_start|>) are parsed as such, and a
        BOS is added when `add_special` and the model asks for one."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def piece(self, token: int, *, special: bool = False) -> bytes:
        buffer = self._piece_buffer
        n = self._lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[: max(n, 0)]

    def special_text(self, token: int) -> str | None:
        return self.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else None

    @property
    def bos(self) -> int:
        return int(self._lib.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(self._lib.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        return bool(self._lib.llama_vocab_get_add_bos(self.vocab))

    def is_end(self, token: int) -> bool:
        """End of generation: EOS, EOT, <|im_end|> and the like, as the GGUF marks them."""
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def end_tokens(self) -> list[int]:
        return [t for t in range(self.n_vocab) if self.is_end(t)]

    def grammar_tokenizer(self) -> Any:
        """llguidance's view of this vocabulary (about a second; build it once per model)."""
        from foundry.local.constrained import import_llguidance

        import_llguidance()
        from llguidance.llamacpp import lltokenizer_from_vocab

        with warnings.catch_warnings():  # it calls a deprecated alias once per token
            warnings.simplefilter("ignore", DeprecationWarning)
            return lltokenizer_from_vocab(self.vocab, eos_token=self.end_tokens())

    # -- the sequence ------------------------------------------------------------------------

    def trim(self, length: int) -> None:
        """Keep only the first `length` tokens of the sequence in the KV cache."""
        length = min(length, len(self.tokens))
        self.llm._ctx.kv_cache_seq_rm(SEQ, length, -1)
        del self.tokens[length:]
        self.llm.n_tokens = length

    def feed(
        self,
        tokens: list[int],
        *,
        stop: Callable[[], bool] | None = None,
        step: int = PREFILL_STEP,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Run `tokens` into the KV cache after what it holds; the last position's logits.
        `stop()` is asked before each chunk (Cancelled); `tokens` stays exact either way.
        `progress(n)` hears each chunk's length once it is in (decode's one-token steps
        come here too: generate_tokens passes it for the prefill only)."""
        if not tokens:
            raise ValueError("feed needs at least one token")
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise ValueError(f"{len(self.tokens) + len(tokens)} tokens exceed n_ctx {self.n_ctx}")
        self.llm.n_tokens = len(self.tokens)
        for start in range(0, len(tokens), step):
            if stop is not None and stop():
                raise Cancelled()
            chunk = tokens[start : start + step]
            self.llm.eval(chunk)  # logits of the chunk's last position only
            self.tokens.extend(chunk)
            if progress is not None:
                progress(len(chunk))
        pointer = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def kv_bytes_per_token(self) -> int:
        """The KV cache's bytes per position, from the model's shape and the KV type (never
        from the context itself, so another thread may ask while a request runs)."""
        lib, model = self._lib, self.llm.model
        heads = int(lib.llama_model_n_head(model)) or 1
        head_dim = int(lib.llama_model_n_embd(model)) // heads
        arch = self.metadata.get("general.architecture", "")
        key = int(self.metadata.get(f"{arch}.attention.key_length", head_dim))
        value = int(self.metadata.get(f"{arch}.attention.value_length", head_dim))
        per_layer = int(lib.llama_model_n_head_kv(model)) * (key + value)
        return int(int(lib.llama_model_n_layer(model)) * per_layer * KV_ELEMENT_BYTES[self.kv_type])

    def save_state(self) -> Any:
        """The KV state of the whole sequence, as llama.cpp serialises it (positions included):
        a writable buffer (foundry.local.llamacpp_layout.state_buffer)."""
        ctx = self.llm.ctx
        size = int(self._lib.llama_state_seq_get_size(ctx, SEQ))
        data = state_buffer(size)
        buffer = (ctypes.c_uint8 * size).from_buffer(data)
        written = int(self._lib.llama_state_seq_get_data(ctx, buffer, size, SEQ))
        del buffer  # release the export
        return data if written == size else memoryview(data)[:written]

    def load_state(self, data: Any, tokens: list[int]) -> bool:
        """Replace the sequence by a saved state holding exactly `tokens`; False (and an empty
        sequence) when llama.cpp refuses it or it holds another number of positions."""
        self.trim(0)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer(data)
        read = int(self._lib.llama_state_seq_set_data(self.llm.ctx, buffer, len(data), SEQ))
        del buffer
        memory = self._lib.llama_get_memory(self.llm.ctx)
        held = int(self._lib.llama_memory_seq_pos_max(memory, SEQ)) + 1
        if read != len(data) or held != len(tokens):
            self.trim(0)  # whatever part of it llama.cpp took
            return False
        self.tokens = list(tokens)
        self.llm.n_tokens = len(tokens)
        return True

    def close(self) -> None:
        self.threads.close()  # detached before the context is freed
        self.llm.close()


def generate_tokens(
    model: LlamaCppModel,
    new_tokens: list[int],
    *,
    max_tokens: int,
    temperature: float,
    times: StepTimes,
    stop: Callable[[], bool] | None = None,
    constraint: Any = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[int]:
    """Prefill `new_tokens`, then decode with foundry.local.engine's engine-neutral loop over
    llama.cpp calls. `model.tokens` always says what the KV cache holds; the caller stops
    between tokens by closing the iterator. `progress(n)` hears the prefill's chunks only."""
    picker = NumpyPicker(temperature, constraint, seed)
    model.threads.fit()  # another foundry's llama.cpp may have started or ended since
    started = time.perf_counter()
    logits = model.feed(new_tokens, stop=stop, progress=progress)
    times.prefill_s = time.perf_counter() - started
    token = picker.pick(logits)
    times.first_token_s = time.perf_counter() - started
    # Never past the context: the reply's room is what the sequence has left.
    room = model.n_ctx - len(model.tokens)
    yield from decode(
        token,
        picker,
        is_end=model.is_end,
        forward=model.feed,
        max_tokens=min(max_tokens, room),
        times=times,
    )
