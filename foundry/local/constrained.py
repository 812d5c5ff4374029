"""Constrained decoding with llguidance: which tokens a grammar allows next, for any engine.

An engine asks `allowed()` for a boolean mask over its vocabulary before it samples, tells
`accept(token)` what it sampled, and gets back the tokens the grammar forces after it (fed
to the model in one step instead of one decode step each). The engine-neutral part lives
here; applying the mask to logits is the engine's (mlx, llama.cpp).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from foundry.backends.base import ModelRequest, ToolChoice, ToolSpec
from foundry.errors import LocalModelError, install_hint
from foundry.local.tool_grammar import CallFormat, output_grammar, tool_call_grammar

log = logging.getLogger(__name__)
# The first bytes of tokens that close a JSON string, then those that close an object or
# array, in the order a call winding up prefers them. Inside a string a token that starts
# with '"' always closes it (an escaped quote starts with a backslash); '}' there is text.
CLOSING_TIERS = (b'"', b"}]")
# How llguidance names the schema keywords it does not implement, in a compile error.
UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")


def import_llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise LocalModelError(
            "constrained tool calls need llguidance, which is not installed",
            f"{install_hint('mlx')} (or set mlx.constrained_tools to false)",
        ) from None
    return llguidance


def hf_grammar_tokenizer(hf_tokenizer: Any, n_vocab: int, eos: list[int]) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer. About a second for a 50k
    vocabulary, so an engine builds it once per model."""
    import_llguidance()
    from llguidance.hf import from_tokenizer

    try:
        return from_tokenizer(hf_tokenizer, n_vocab=n_vocab, eos_token=eos)
    except Exception as exc:  # a slow (non-Rust) tokenizer, or a vocabulary it cannot read
        raise LocalModelError(
            f"constrained tool calls cannot read this model's tokenizer: {exc}",
            "set mlx.constrained_tools to false in cache_config.json",
        ) from None


def closing_tokens(grammar_tokenizer: Any) -> np.ndarray:
    """One mask per CLOSING_TIERS entry: the tokens whose first byte is in it."""
    closers = np.zeros((len(CLOSING_TIERS), int(grammar_tokenizer.vocab_size)), dtype=bool)
    for token in range(closers.shape[1]):
        text = grammar_tokenizer.decode_bytes([token])
        for tier, first_bytes in enumerate(CLOSING_TIERS):
            closers[tier, token] = bool(text) and text[0] in first_bytes
    return closers


@dataclass
class MaskCost:
    """What masking cost in one reply: for the per-token overhead figure."""

    masks: int = 0
    mask_s: float = 0.0
    forced: int = 0  # tokens the grammar forced (fed without sampling)

    @property
    def ms_per_token(self) -> float | None:
        return self.mask_s * 1000 / self.masks if self.masks else None


class ToolConstraint:
    """One reply's grammar state: built from the request's tools and tool_choice."""

    def __init__(
        self, grammar_tokenizer: Any, grammar: str, closers: np.ndarray | None = None
    ) -> None:
        llguidance = import_llguidance()
        self.matcher = llguidance.LLMatcher(grammar_tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())
        self.n_vocab = int(grammar_tokenizer.vocab_size)
        self.eos = [t for t in grammar_tokenizer.eos_tokens if t < self.n_vocab]
        self.cost = MaskCost()
        self.closers = closers
        self.closing = False  # steering the call to its end (see wind_up)
        self.failed = False  # the grammar refused a token: the reply went on without it

    @classmethod
    def for_request(
        cls,
        grammar_tokenizer: Any,
        tools: list[ToolSpec],
        choice: ToolChoice | None,
        fmt: CallFormat,
        closers: np.ndarray | None = None,
        *,
        strict_fails: bool = False,
        on_lenient: Callable[[str], None] | None = None,
    ) -> ToolConstraint | None:
        """The constraint for a request, or None (logged) when no grammar can be built: the
        strict schemas first (unless they are known to fail), then leniently (unimplemented
        keywords ignored; `on_lenient` hears why the strict grammar failed)."""
        problem = ""
        for lenient in (False, True) if not strict_fails else (True,):
            grammar = tool_call_grammar(tools, choice, fmt, lenient=lenient)
            try:
                constraint = cls(grammar_tokenizer, grammar, closers)
            except ValueError as exc:
                problem = str(exc)
                continue
            if lenient and on_lenient is not None:
                on_lenient(problem)
            return constraint
        log.warning("tool calls are not constrained for this request: %s", problem)
        return None

    @property
    def finished(self) -> bool:
        """The grammar allows nothing more: the reply is complete."""
        return bool(self.matcher.is_stopped())

    def allowed(self) -> np.ndarray:
        """A boolean mask over the vocabulary: True where the grammar allows the token."""
        started = time.perf_counter()
        mask = self._grammar_mask()
        if self.closing and self.closers is not None:
            if self.eos and mask[self.eos].any():  # not inside a call: end the reply
                only = np.zeros_like(mask)
                only[self.eos] = mask[self.eos]
                return only
            for tier in self.closers:  # close a string first, then objects and arrays
                closing = mask & tier
                if closing.any():
                    mask = closing
                    break
        self.cost.mask_s += time.perf_counter() - started
        self.cost.masks += 1
        return mask

    def wind_up(self) -> bool:
        """Steer the rest of a reply stuck inside a call to its end: from now on, where the
        grammar allows a token that closes a string, only those; else, where it allows one
        that closes an object or array, only those; once the call is closed, the end of
        the turn. The call then ends valid instead of being cut off. False when it is
        already winding up, or the reply is not inside a call (a loop in text just stops)."""
        if self.closing or self.closers is None or self._may_end():
            return False
        self.closing = True
        return True

    def _may_end(self) -> bool:
        """Whether the grammar allows the end of the turn now (the reply is not in a call)."""
        return bool(self.eos) and bool(self._grammar_mask()[self.eos].any())

    def _grammar_mask(self) -> np.ndarray:
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.n_vocab].astype(bool)

    def accept(self, token: int) -> list[int]:
        """Advance past a sampled token; returns the tokens the grammar now forces (already
        consumed), which the engine feeds and emits as if sampled."""
        if not self.matcher.consume_token(token):
            self.failed = True
            raise ValueError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        forced = list(self.matcher.compute_ff_tokens())
        if forced and not self.matcher.consume_tokens(forced):
            self.failed = True
            raise ValueError(f"the grammar refused its own forced tokens: {forced}")
        self.cost.forced += len(forced)
        return forced


class ToolGrammars:
    """One model's constraints: its grammar tokenizer (built on first use) and call format."""

    def __init__(
        self, make_tokenizer: Callable[[], Any], fmt: CallFormat | None, *, enabled: bool
    ) -> None:
        self.make_tokenizer = make_tokenizer
        self.fmt = fmt
        self.enabled = enabled
        self._tokenizer: Any = None
        self._closers: np.ndarray | None = None
        self._warned = False
        # Tool sets whose strict grammar failed (not tried again), and tools already named in
        # a warning: a client sends the same tools with every request, and one line per tool,
        # once, says all there is to say.
        self._strict_fails: set[str] = set()
        self._named: set[str] = set()

    def for_request(self, request: ModelRequest) -> ToolConstraint | None:
        """The constraint for one request with tools, or with a structured output and no
        tool it may call; None when off or not possible."""
        if not self.enabled:
            return None
        schema = getattr(request, "output_schema", None)
        choice = request.tool_choice
        if schema is not None and (not request.tools or (choice and choice.type == "none")):
            return self._output_constraint(schema)
        if not request.tools:
            return None
        if self.fmt is None:
            if not self._warned:
                log.warning(
                    "this model's native tool-call format has no grammar in foundry; "
                    "its tool calls are parsed, not constrained"
                )
                self._warned = True
            return None
        self._load_tokenizer()
        fmt = self.fmt
        key = json.dumps([[t.name, t.input_schema] for t in request.tools], sort_keys=True)

        def lenient(problem: str) -> None:
            self._strict_fails.add(key)
            for tool in request.tools:
                if tool.name not in self._named:
                    self._name_unenforced(tool, fmt)

        return ToolConstraint.for_request(
            self._tokenizer,
            request.tools,
            request.tool_choice,
            fmt,
            self._closers,
            strict_fails=key in self._strict_fails,
            on_lenient=lenient,
        )

    def _load_tokenizer(self) -> None:
        if self._tokenizer is None:  # built on first use: it reads the whole vocabulary
            self._tokenizer = self.make_tokenizer()
            self._closers = closing_tokens(self._tokenizer)

    def _output_constraint(self, schema: dict[str, Any]) -> ToolConstraint | None:
        self._load_tokenizer()
        problem = ""
        for lenient in (False, True):
            try:
                constraint = ToolConstraint(
                    self._tokenizer, output_grammar(schema, lenient=lenient), self._closers
                )
            except ValueError as exc:
                problem = str(exc)
                continue
            if lenient:
                found = UNIMPLEMENTED.search(problem)
                what = found.group(1).replace('"', "") if found else "a keyword"
                log.warning("the output schema uses %s, which the grammar cannot enforce", what)
            return constraint
        log.warning("the structured output is not constrained: %s", problem.splitlines()[0])
        return None

    def _name_unenforced(self, tool: ToolSpec, fmt: CallFormat) -> None:
        """One warning line for `tool` if its own schema needs the lenient grammar, naming
        the keywords the grammar cannot enforce."""
        self._named.add(tool.name)
        try:
            ToolConstraint(self._tokenizer, tool_call_grammar([tool], None, fmt))
        except ValueError as exc:
            found = UNIMPLEMENTED.search(str(exc))
            what = found.group(1).replace('"', "") if found else "a keyword"
            log.warning(
                "tool %r: its schema uses %s, which the grammar cannot enforce; ignored, the "
                "rest of its schema is enforced",
                tool.name,
                what,
            )
