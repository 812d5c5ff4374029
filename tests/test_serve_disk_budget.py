"""What one client of `foundry serve` may write to the prefix store is bounded: past its
hourly budget (a quarter of prefix_cache.max_bytes) a new prefix is served from memory and
not saved, the log says so once, and the budget comes back an hour later. /cache/stats
shows the budget but never the server's paths. All over real HTTP with the real SDK."""

from __future__ import annotations

import json
import logging

import httpx2
import pytest

from tests.serve_helpers import SYSTEM, serving, system_blocks

pytestmark = pytest.mark.mlx
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
# One saved prefix of the tiny model (~370 tokens of system prompt) is ~0.27 MB: two fit.
BUDGET = 600_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ask(served, project: int):
    key = served.service.settings.api_key or "local"
    return served.client(api_key=key).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=3,
        system=system_blocks(f"Project {project}. " + SYSTEM),
        messages=[{"role": "user", "content": "hi"}],
    )


def test_a_client_past_its_hourly_disk_budget_is_served_from_memory(
    tiny_model_dir, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    store = tmp_path / "prefix-cache"
    store_size = {"max_bytes": 4 * BUDGET}  # a client's hour: a quarter of the store
    with serving(tiny_model_dir, tmp_path, prefix_cache=store_size, api_key="k3y") as served:
        clock = Clock()
        served.service.disk_budget.clock = clock
        replies = [_ask(served, project) for project in range(5)]
        files = list(store.glob("*.safetensors"))
        assert len(files) == 2  # the first two new prefixes; the next three were not saved
        assert sum(f.stat().st_size for f in files) <= BUDGET
        writes = [r.usage.cache_creation_input_tokens for r in replies]
        assert writes[0] > 300 and writes[1] > 300 and writes[2:] == [0, 0, 0]
        assert all(r.content is not None and r.usage.output_tokens >= 1 for r in replies)
        rows = served.ledger_rows()
        assert [r["status"] for r in rows] == ["ok"] * 5
        assert [r["cache_write_5m_tokens"] for r in rows] == writes
        # The same conversation again is still read from memory.
        again = _ask(served, 4)
        assert again.usage.cache_read_input_tokens > 300
        over = [r for r in caplog.records if "disk budget" in r.getMessage()]
        assert len(over) == 1 and over[0].levelno == logging.WARNING  # said once
        assert "k3y" not in caplog.text
        stats = served.stats()
        assert stats["disk"]["entries"] == 2
        writes_stats = stats["disk"]["writes"]
        assert writes_stats["budget_bytes_per_client_hour"] == BUDGET
        assert writes_stats["skipped"] == 3 and writes_stats["clients_over_budget"] == 1
        # An hour later the client may write again.
        clock.now += 3601
        later = _ask(served, 9)
        assert later.usage.cache_creation_input_tokens > 300
        assert len(list(store.glob("*.safetensors"))) == 3


def test_cache_stats_never_show_the_servers_paths(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path) as served:
        _ask(served, 1)
        raw = httpx2.get(f"{served.url}/cache/stats").text
        stats = json.loads(raw)
        assert stats["disk"]["entries"] == 1 and stats["disk"]["total_bytes"] > 0
        for secret in (str(tmp_path), str(tiny_model_dir), "prefix-cache"):
            assert secret not in raw
        assert "dir" not in stats["disk"]
