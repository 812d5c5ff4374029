"""The openai backend against a real third-party server: mlx_lm.server (mlx-lm's
OpenAI-compatible server, whose LRU prompt cache reports `cached_tokens`), on loopback with
the tiny test model. A multi-turn phase goes through the backend; the ledger must equal the
server's usage request by request, and every request after the first must read the cache."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundry.backends.base import Message, ModelRequest
from foundry.backends.openai.client import SERVER_MODEL, OpenAIBackend
from foundry.config import FoundryConfig
from foundry.ledger import Ledger
from foundry.orchestrator.tools import tool_specs
from tests.fake_openai.mlx_lm_server import mlx_lm_server

# Looked up, not imported: mlx imported here, before foundry preloads OpenBLAS, would slow
# every later mlx test in this process ~30x. The server runs in its own process.
pytestmark = [
    pytest.mark.mlx,
    pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="needs mlx-lm"),
]

SYSTEM = (
    "You are a careful build orchestrator. Read files, write files, run the tests.\n"
    'The tool call format is <tool_call>{"name": "read_file", "arguments": {"path": "x"}}'
    "</tool_call>\n"
) * 6


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlx_lm_server(tiny_model_dir, tmp_path_factory.mktemp("mlx-lm-server")) as url:
        yield url


class Tap:
    """The usage chunks mlx_lm.server sent, read off the SDK's own stream (the raw truth the
    ledger is checked against)."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.usages: list[dict[str, Any]] = []
        client = backend._get_client()
        create = client.chat.completions.create
        tap = self

        class Stream:
            def __init__(self, inner: Any) -> None:
                self.inner, self.response = inner, inner.response

            def __enter__(self) -> Stream:
                return self

            def __exit__(self, *exc: object) -> None:
                self.inner.close()

            def __iter__(self) -> Iterator[Any]:
                for chunk in self.inner:
                    if chunk.usage is not None:
                        tap.usages.append(chunk.usage.model_dump())
                    yield chunk

        client.chat.completions.create = lambda **params: Stream(create(**params))


def test_a_phase_through_mlx_lm_server_is_on_the_ledger_as_the_server_reported(
    server: str, tmp_path: Path
) -> None:
    config = FoundryConfig()
    config.openai.max_tokens = 8
    backend = OpenAIBackend(config, SERVER_MODEL, base_url=server)
    backend.check()  # the server lists its one model: the tiny model's directory
    assert Path(backend.model).name == "model" and backend.local
    tap = Tap(backend)
    messages = [Message("user", [{"type": "text", "text": "Build a todo app."}])]
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        for turn in range(1, 5):
            request = ModelRequest(
                backend.model, SYSTEM, tool_specs(), list(messages), 8, temperature=0.0
            )
            response = backend.complete(request)
            ledger.record_request(
                build_id=None, phase="scout", turn=turn, backend=backend.name,
                model=backend.model, usage=response.usage, started_at=response.started_at or "",
                local=backend.local,
            )  # fmt: skip
            # The tiny model writes noise; the conversation grows as a build's would.
            messages.append(Message("assistant", [{"type": "text", "text": f"step {turn}"}]))
            messages.append(Message("user", [{"type": "text", "text": f"result {turn}"}]))
    backend.close()
    # The tiny model's template has no tools, so mlx_lm.server ignored them; nothing broke.
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        rows = conn.execute(
            "SELECT input_tokens, cache_read_tokens, output_tokens, cost_usd, pricing_version,"
            " prefill_saved_ms FROM requests ORDER BY id"
        ).fetchall()
    assert len(rows) == len(tap.usages) == 4
    for row, sent in zip(rows, tap.usages, strict=True):
        cached = sent["prompt_tokens_details"]["cached_tokens"]
        assert row[:3] == (sent["prompt_tokens"] - cached, cached, sent["completion_tokens"])
        assert row[3:5] == (0.0, "local")
    assert rows[0][1] == 0
    for row, sent in zip(rows[1:], tap.usages[1:], strict=True):
        # Each later request reads what the one before left in the server's prompt cache.
        assert row[1] > 0 and row[1] >= 0.8 * sent["prompt_tokens"], json.dumps(sent)
        assert row[5] is not None and row[5] > 0
