"""A GGUF's chat template and tokenizer, shaped as foundry.local.chat.ChatRenderer expects
(the slice of a Hugging Face tokenizer it uses), so llama.cpp models render, cache and parse
prompts exactly as mlx models do.

The template is rendered the way transformers renders chat templates (a sandboxed Jinja
environment with trim_blocks/lstrip_blocks, `raise_exception`, `tojson`), without importing
transformers. A Qwen/Hermes-style template (JSON calls between <tool_call> tags, mlx-lm's
"json_tools") gets the tools through the template, as mlx does, since foundry's grammar
covers that format; every other model gets foundry's fallback format, which is always
constrained.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from typing import Any

from foundry.errors import LocalModelError
from foundry.local.llamacpp_engine import LlamaCppModel


def _raise(message: str) -> None:
    raise ValueError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def renders_json_tool_calls(template: str | None) -> bool:
    """A template whose calls are {"name", "arguments"} JSON between <tool_call> tags (the
    rule mlx-lm uses for "json_tools"; Qwen3-Coder's <function=...> bodies are not JSON)."""
    return (
        bool(template)
        and "<tool_call>" in str(template)
        and "tool_call.name" in str(template)
        and "<function=" not in str(template)
    )


class GgufChatTokenizer:
    tool_call_start = "<tool_call>"
    tool_call_end = "</tool_call>"

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model
        self.chat_template: str | None = model.metadata.get("tokenizer.chat_template")
        self.bos_token = model.special_text(model.bos)
        self.eos_token = model.special_text(model.eos)
        # What ChatRenderer reads of a tokenizer to choose native tools (as mlx-lm's say);
        # False: foundry's own <tool_call> format in the system turn.
        self.has_tool_calling = renders_json_tool_calls(self.chat_template)
        self.init_kwargs = {"tool_parser_type": "json_tools"} if self.has_tool_calling else {}

    @cached_property
    def _template(self) -> Any:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        return env.from_string(self.chat_template or "")

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = False,
        **extra: Any,
    ) -> str:
        if tokenize:
            raise LocalModelError("only text rendering is supported", "render, then encode")
        return str(
            self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **extra,
            )
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special=add_special_tokens)
