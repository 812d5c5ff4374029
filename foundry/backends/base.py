"""The one interface every model backend implements, and the types it speaks.

Content blocks are Anthropic-style dicts, so the Claude backend sends them as they are and
the local backend renders them through the model's chat template:
  {"type": "text", "text": str}
  {"type": "tool_use", "id": str, "name": str, "input": dict}
  {"type": "tool_result", "tool_use_id": str, "content": str, "is_error": bool}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Block = dict[str, Any]
Ttl = Literal["5m", "1h"]


@dataclass
class Message:
    role: Literal["user", "assistant"]
    content: list[Block]

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


@dataclass
class ModelRequest:
    model: str
    system: str  # the static part: identical for every request of every build
    tools: list[ToolSpec]
    messages: list[Message]
    max_tokens: int
    ttl: Ttl | None = "5m"  # None: send no cache breakpoints at all
    temperature: float | None = None
    # "keepalive" requests only refresh the cache; the ledger records them as such.
    purpose: Literal["turn", "keepalive"] = "turn"


@dataclass
class Usage:
    """Token counts with Anthropic's meanings, filled the same way by every backend.

    input_tokens is uncached input only (for a local model: tokens prefilled now);
    total input = input + cache_read + cache writes.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float | None = None
    # Local-model measurements; None where a backend cannot know them.
    prefill_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    prefill_saved_ms: float | None = None  # estimated prefill time the reused tokens saved

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelResponse:
    content: list[Block]
    stop_reason: str | None
    usage: Usage
    model: str
    request_id: str | None = None
    started_at: str | None = None  # UTC ISO-8601 with Z

    @property
    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if b.get("type") == "text")

    @property
    def tool_uses(self) -> list[Block]:
        return [b for b in self.content if b.get("type") == "tool_use"]


@dataclass
class FailedAttempt:
    """One attempt that failed; its reported usage is still recorded on the ledger."""

    error_class: str
    message: str
    usage: Usage = field(default_factory=Usage)
    request_id: str | None = None
    started_at: str | None = None
    will_retry: bool = False


TextCallback = Callable[[str], None]
AttemptCallback = Callable[[FailedAttempt], None]


@runtime_checkable
class Backend(Protocol):
    """A model backend. Construct with (config, model); then `check()` once, `complete()` often."""

    name: str
    model: str

    def check(self) -> None:
        """Fail fast, before any model call, with a FoundryError (missing key, missing model...)."""

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
    ) -> ModelResponse:
        """Run one model request (streaming text deltas to on_text) and return the response.

        Retries happen inside; each failed attempt is reported to on_failed_attempt. When no
        attempt succeeds, raises BackendError with the error_class set.
        """
        ...

    def close(self) -> None:
        """Release resources (HTTP clients, model memory)."""
