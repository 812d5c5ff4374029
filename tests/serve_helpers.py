"""`foundry serve` in a test: the real server (uvicorn on 127.0.0.1, a random port) over the
tiny model, opened the way the command opens it, and the real anthropic SDK as its client.

The tiny random model answers gibberish, so tests that need a particular reply (a tool
call, a stop sequence, an endless stream) script the sampled tokens: `Script` replaces only
the sampling step of foundry.local.engine.generate_tokens. Prefill, the KV caches, the
detokenizer, tool-call parsing, HTTP and SSE all stay real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM = "You are a careful build orchestrator. Read files, write files, run the tests. " * 12
READ_TOOL = {
    "name": "read_file",
    "description": "Read a file.",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


def system_blocks(text: str = SYSTEM) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


@dataclass
class Script:
    """Replies the model will "sample" (consumed in order), or an endless stream."""

    replies: list[str] = field(default_factory=list)
    endless: bool = False
    delay_s: float = 0.0
    backend: Any = None  # set to watch the cancel flag
    after_cancel: int = 0  # tokens sampled after the request was cancelled
    sampled: int = 0

    def install(self, monkeypatch: Any) -> Script:
        import foundry.local.engine as engine

        real = engine.generate_tokens

        def generate_tokens(
            loaded, cache, new_tokens, *, max_tokens, temperature, times, fed, stop=None, **extra
        ):
            # `extra` (a tool-call grammar, say) goes to the real sampler; a scripted reply
            # is what the test says the model wrote, so nothing constrains it.
            if not self.replies and not self.endless:
                yield from real(
                    loaded,
                    cache,
                    new_tokens,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    times=times,
                    fed=fed,
                    stop=stop,
                    **extra,
                )
                return
            yield from self._scripted(loaded, cache, new_tokens, max_tokens, times, fed, stop)

        monkeypatch.setattr(engine, "generate_tokens", generate_tokens)
        return self

    def _scripted(self, loaded, cache, new_tokens, max_tokens, times, fed, stop):
        import mlx.core as mx

        from foundry.local.engine import prefill

        started = time.perf_counter()
        prefill(
            loaded.model, cache, new_tokens, stop=stop, fed=lambda chunk: [fed(t) for t in chunk]
        )
        times.prefill_s = time.perf_counter() - started
        ids = None
        if self.replies:
            ids = list(loaded.tokenizer.encode(self.replies.pop(0), add_special_tokens=False))
        count = 0
        while count < max_tokens:
            if ids is not None and count == len(ids):
                times.ended_on_eos = True  # as if the model ended its turn here
                times.generated = count + 1
                return
            token = ids[count] if ids is not None else 40 + count % 20
            if self.delay_s:
                time.sleep(self.delay_s)
            cancel = getattr(self.backend, "_cancel", None)
            if cancel is not None and cancel.is_set():
                self.after_cancel += 1
            times.generated = count + 1
            self.sampled += 1
            yield token
            loaded.model(mx.array([[token]]), cache=cache)
            fed(token)
            count += 1


@dataclass
class Served:
    url: str
    runner: Any
    db: Path

    @property
    def service(self) -> Any:
        return self.runner.service

    @property
    def backend(self) -> Any:
        return self.runner.service.backend

    def client(self, **kwargs: Any) -> Any:
        import anthropic

        kwargs.setdefault("api_key", "local")
        kwargs.setdefault("max_retries", 0)
        return anthropic.Anthropic(base_url=self.url, **kwargs)

    def stats(self) -> dict[str, Any]:
        import httpx2

        return httpx2.get(f"{self.url}/cache/stats", headers=self._auth()).json()

    def _auth(self) -> dict[str, str]:
        key = self.service.settings.api_key
        return {"x-api-key": key} if key else {}

    def ledger_rows(self) -> list[dict[str, Any]]:
        import sqlite3

        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
        finally:
            conn.close()


@contextmanager
def serving(
    model_dir: Path,
    home: Path,
    *,
    backend: str = "mlx",
    serve: dict[str, Any] | None = None,
    mlx: dict[str, Any] | None = None,
    api_key: str | None = None,
    response_cache: bool = True,
    context_policy: str | None = None,
    prefix_cache: dict[str, Any] | None = None,
) -> Iterator[Served]:
    """The server, opened as `foundry serve --port 0 --backend BACKEND` opens it, running in
    a thread (`mlx` settings apply to whichever engine serves)."""
    from foundry.server.run import ServeOptions, open_server

    home.mkdir(parents=True, exist_ok=True)
    config = home / "serve-config.json"
    config.write_text(
        json.dumps(
            {
                "prefix_cache": {"dir": str(home / "prefix-cache"), **(prefix_cache or {})},
                "serve": serve or {},
                "mlx": mlx or {},
                "llamacpp": mlx or {},
            }
        )
    )
    db = home / "ledger.db"
    opened = open_server(
        ServeOptions(
            model=str(model_dir),
            backend=backend,
            port=0,
            api_key=api_key,
            context_policy=context_policy,
            response_cache=response_cache,
            config=config,
            db=db,
        )
    )
    opened.runner.start_in_thread()
    try:
        yield Served(opened.url, opened.runner, db)
    finally:
        opened.runner.stop()
        opened.runner.service.close()


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a raw text/event-stream body."""
    events = []
    for chunk in raw.strip().split("\n\n"):
        name, data = "", ""
        for line in chunk.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
        if name:
            events.append((name, json.loads(data) if data else {}))
    return events
