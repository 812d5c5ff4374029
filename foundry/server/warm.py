"""Warming a prompt cache ahead of time, so the first real request is already a hit.

* A local model and the orchestrator prompt: its system turn (static text + tool schemas) is
  computed and saved to the prefix store exactly as a build's first request would save it.
* A local model and a served client's request (a Messages API body in a JSON file, e.g. one
  Claude Code sent): its system prompt and tools, up to each system cache breakpoint, are
  saved as `foundry serve` would save them; its messages are not.
* Claude: one minimal request (one output token) with a build's static prefix and
  breakpoints writes it to Anthropic's cache.

Either way it is one real model request with one output token, recorded on the ledger
(phase "warm"), so its cost (for Claude) or its prefill time (local) is accounted for.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from foundry.backends.base import Message, ModelRequest, PrefillCallback
from foundry.errors import FoundryError, UsageError
from foundry.timestamps import utc_now
from foundry.usage import Usage

PHASE = "warm"
# The user turn of the warming request: a build's own first turn differs, and only the
# prefix before it (system + tools) is what is being written.
WARM_TEXT = "Warm the prompt cache; reply with one word."


@dataclass
class WarmOptions:
    backend: str | None = None
    model: str | None = None
    request_file: Path | None = None
    template: Path | None = None
    ttl: str | None = None
    config: Path | None = None
    db: Path | None = None
    on_prefill: PrefillCallback | None = None  # a local model's prefill progress


@dataclass
class WarmResult:
    backend: str
    model: str
    local: bool
    usage: Usage
    seconds: float
    cost_usd: float | None
    source: str  # "orchestrator prompt" or the request file

    @property
    def already_warm(self) -> bool:
        return self.usage.cache_write_tokens == 0 and self.usage.cache_read_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "source": self.source,
            "already_warm": self.already_warm,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "input_tokens": self.usage.input_tokens,
            "seconds": round(self.seconds, 3),
            "cost_usd": self.cost_usd,
        }


def _strip_message_breakpoints(messages: list[Message]) -> list[Message]:
    return [
        Message(m.role, [{k: v for k, v in b.items() if k != "cache_control"} for b in m.content])
        for m in messages
    ]


def client_request(path: Path, model: str) -> ModelRequest:
    """The system prompt and tools of a served client's request file, ready to warm."""
    from foundry.server.protocol import ApiError, parse_request

    try:
        body = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {exc.strerror}", "check the --request path"
        ) from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}", "give a Messages API request body") from None
    if isinstance(body, dict):
        body = {**body, "max_tokens": 1, "stream": False}
    try:
        parsed = parse_request(body, model)
    except ApiError as exc:
        raise UsageError(f"{path}: {exc.message}", "give a Messages API request body") from None
    return replace(parsed.request, messages=_strip_message_breakpoints(parsed.request.messages))


def orchestrator_request(options: WarmOptions, model: str, config: Any) -> ModelRequest:
    """A build's first request, up to its task: the static prompt and the workspace tools."""
    from foundry.orchestrator.plan import check_ttl
    from foundry.orchestrator.tools import tool_specs
    from foundry.prompt.split import render_split
    from foundry.prompt.template import load_template

    prompt = render_split(load_template(options.template), marker=config.caching.boundary_marker)
    return ModelRequest(
        model=model,
        system=prompt.static,
        tools=tool_specs(),
        messages=[Message("user", [{"type": "text", "text": WARM_TEXT}])],
        max_tokens=1,
        ttl=check_ttl(options.ttl, config),
    )


def warm(options: WarmOptions) -> WarmResult:
    from foundry.backends.registry import create_backend, resolve_backend
    from foundry.config import ledger_path, load_config
    from foundry.ledger.store import Ledger

    config = load_config(options.config)
    name = resolve_backend(config, options.backend, options.model)
    backend = create_backend(name, config, options.model)
    if options.request_file is not None and not backend.local:
        raise UsageError(
            "--request warms a local model for `foundry serve`",
            "use --backend mlx or llamacpp (the engine foundry serve runs) with --request, or "
            "leave --request out to warm Claude's cache for builds",
        )
    try:
        backend.check()
        if options.request_file is not None:
            request = client_request(options.request_file, backend.model)
            source = str(options.request_file)
        else:
            request = orchestrator_request(options, backend.model, config)
            source = "orchestrator prompt"
        request = replace(request, on_prefill=options.on_prefill)
        if request.ttl is None:
            raise UsageError(
                "caching is turned off, so there is nothing to warm",
                "set caching.enabled to true in cache_config.json",
            )
        started_at = utc_now()
        started = time.perf_counter()
        response = backend.complete(request)
        seconds = time.perf_counter() - started
    finally:
        backend.close()
    with Ledger.open(ledger_path(config, options.db)) as ledger:
        recorded = ledger.record_request(
            build_id=None,
            phase=PHASE,
            turn=None,
            backend=backend.name,
            model=response.model or backend.model,
            usage=response.usage,
            started_at=response.started_at or started_at,
            stop_reason=response.stop_reason,
            provider_request_id=response.request_id,
        )
    cost = None if backend.local else recorded.cost.cost_usd
    usage = response.usage
    if not usage.cache_write_tokens and not usage.cache_read_tokens:
        raise FoundryError(
            f"{backend.model} cached nothing from {source}: its prefix is "
            + (
                "too short to be worth saving"
                if backend.local
                else "below the model's minimum cacheable length"
            ),
            "check the prompt with 'foundry analyze-prompt'",
        )
    return WarmResult(backend.name, backend.model, backend.local, usage, seconds, cost, source)
