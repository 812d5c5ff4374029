"""The one interface every model backend implements, and the types it speaks.

Content blocks are Anthropic-style dicts, so the Claude backend sends them as they are and
the local backend renders them through the model's chat template:
  {"type": "text", "text": str}
  {"type": "tool_use", "id": str, "name": str, "input": dict}
  {"type": "tool_result", "tool_use_id": str, "content": str, "is_error": bool}
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from foundry.usage import Usage

if TYPE_CHECKING:
    from foundry.config import FoundryConfig

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


@dataclass(frozen=True)
class ToolChoice:
    """Which tool calls a reply may hold, with Anthropic's meanings: "auto" (text, calls, or
    both), "any" (at least one call), "tool" (a call of `name`), "none" (text only).
    `parallel=False` allows at most one call (Anthropic's disable_parallel_tool_use).
    `required` names arguments the named tool's call must carry, non-empty: it narrows a
    local model's grammar only and is not sent to an API."""

    type: Literal["auto", "any", "tool", "none"] = "auto"
    name: str | None = None
    parallel: bool = True
    required: tuple[str, ...] = ()

    def to_anthropic(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.name is not None:
            body["name"] = self.name
        if not self.parallel and self.type != "none":
            body["disable_parallel_tool_use"] = True
        return body


@dataclass(frozen=True)
class PrefillProgress:
    """How far a local engine is through prefilling one request's prompt, told between its
    chunks (never per decoded token). `total` is what this request prefills (not what it
    reuses from a cache); `saving`: the tokens include a prefix being saved to the prefix
    store, so this wait happens once."""

    done: int
    total: int
    elapsed_s: float
    saving: bool = False


PrefillCallback = Callable[[PrefillProgress], None]


@dataclass
class ModelRequest:
    model: str
    system: str  # the static part: identical for every request of every build
    tools: list[ToolSpec]
    messages: list[Message]
    max_tokens: int
    ttl: Ttl | None = "5m"  # None: send no cache breakpoints at all
    temperature: float | None = None
    tool_choice: ToolChoice | None = None  # None: the backend's default, "auto"
    # "keepalive" requests only refresh the cache; the ledger records them as such.
    purpose: Literal["turn", "keepalive"] = "turn"
    # Hears a local engine's prefill progress; backends without a prefill of their own
    # (the APIs) never call it. Pass a plain function: deepcopy keeps functions as they are,
    # where a bound method would copy its object (a display) along with the request.
    on_prefill: PrefillCallback | None = field(default=None, repr=False, compare=False)


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
    """A model backend. Construct with (config, model, base_url=...); then `check()` once,
    `complete()` often. `base_url` (--base-url) points a server backend elsewhere; a backend
    without a server refuses it with a UsageError.

    Callers ask a backend what it can do, never which one it is: the attributes below are
    the whole of what the orchestrator, the ledger and the reports may know about it.
    """

    name: ClassVar[str]  # the registry's name, recorded on the ledger
    # Runs on this machine (or a free server of one's own): it costs no money, and what its
    # cache saves is prefill time. The class says it; an instance whose locality depends on
    # its endpoint (an OpenAI-compatible server on loopback or a hosted API) says it too.
    local: bool
    model: str
    max_tokens: int  # the reply cap a build asks for by default

    def __init__(
        self, config: FoundryConfig, model: str, *, base_url: str | None = None
    ) -> None: ...

    @classmethod
    def default_model(cls, config: FoundryConfig) -> str:
        """The model a build uses when --model is not given."""
        ...

    @classmethod
    def auto_available(cls, config: FoundryConfig) -> bool:
        """Whether `--backend auto` may choose this backend (e.g. its API key is set)."""
        ...

    @property
    def context_window(self) -> int | None:
        """Prompt + reply tokens the model takes; None while unknown (before loading)."""
        ...

    @property
    def endpoint(self) -> str | None:
        """Where requests go, for the confirmation and the display; None for in-process."""
        ...

    def check(self) -> None:
        """Fail fast, before any model call, with a FoundryError (missing key, missing model...)."""

    def keepalive_request(self, last: ModelRequest) -> ModelRequest | None:
        """A minimal request that keeps `last`'s cache entries alive while the build is idle,
        or None when the backend's cache does not expire (nothing to keep alive)."""
        ...

    def count_tokens(self, system: str) -> int:
        """The exact tokens `system` adds to a request for this model, or a FoundryError
        saying exact counts are not available (the caller then estimates)."""
        ...

    def complete(
        self,
        request: ModelRequest,
        *,
        on_text: TextCallback | None = None,
        on_failed_attempt: AttemptCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ModelResponse:
        """Run one model request (streaming text deltas to on_text) and return the response.

        Retries happen inside; each failed attempt is reported to on_failed_attempt. When no
        attempt succeeds, raises BackendError with the error_class set. A backend that can
        stop mid-request does so soon after `cancel` is set (error_class "cancelled"); one
        that cannot may ignore it.
        """
        ...

    def close(self) -> None:
        """Release resources (HTTP clients, model memory)."""
