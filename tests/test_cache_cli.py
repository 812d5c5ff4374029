"""foundry cache list / stats / clear / prune, through the CLI."""

from __future__ import annotations

import json
import time

import pytest

from foundry.config import FoundryConfig
from foundry.local.engine import load_model, model_identity, prefill
from foundry.local.prefix_store import PrefixCacheStore, PrefixIdentity

pytestmark = pytest.mark.mlx


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir, "tiny", kv_dtype="auto", max_kv_size=None)


@pytest.fixture
def store(loaded):
    store = PrefixCacheStore.from_config(FoundryConfig())  # $FOUNDRY_HOME/prefix-cache
    identity = model_identity(loaded)
    for model, n in (("tiny", 10), ("other", 12)):
        cache = loaded.make_cache()
        prefill(loaded.model, cache, list(range(3, 3 + n)))
        fields = {**identity.fields, "max_kv_size": None if model == "tiny" else 99}
        store.save(PrefixIdentity(fields, model=model), list(range(3, 3 + n)), cache)
    return store


def test_list_and_stats(cli, store) -> None:
    rows = json.loads(cli("cache", "list", "--json").stdout)["entries"]
    assert sorted((r["model"], r["n_tokens"]) for r in rows) == [("other", 12), ("tiny", 10)]
    assert {r["kind"] for r in rows} == {"prefix"}  # mlx prefixes are stored whole
    assert all(
        r["size_bytes"] > 0 and r["hits"] == 0 and r["created_at"].endswith("Z") for r in rows
    )
    stats = json.loads(cli("cache", "stats", "--json").stdout)
    assert stats["entries"] == 2 and stats["total_bytes"] == sum(r["size_bytes"] for r in rows)
    assert stats["tokens_stored"] == 22 and stats["max_bytes"] == 4 * 1024**3
    assert "tiny" in cli("cache", "list").stdout
    assert "2 saved prefixes" in cli("cache", "stats").stdout


def test_clear_pattern_then_all(cli, store) -> None:
    result = cli("cache", "clear", "oth*", "--json")
    assert [r["model"] for r in json.loads(result.stdout)["removed"]] == ["other"]
    assert "removed 1 saved prefixes" in cli("cache", "clear").stdout
    assert json.loads(cli("cache", "list", "--json").stdout)["entries"] == []
    assert "no saved prefixes" in cli("cache", "list").stderr


def test_prune_applies_the_configured_ttl(cli, store, tmp_path) -> None:
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps({"prefix_cache": {"ttl_days": 0.00001}}))
    time.sleep(1.0)
    result = cli("cache", "prune", "--config", str(config), "--json")
    assert result.exit_code == 0, result.stderr
    removed = json.loads(result.stdout)["removed"]
    assert sorted(r["reason"] for r in removed) == ["expired", "expired"]
    assert json.loads(cli("cache", "stats", "--json").stdout)["entries"] == 0


def test_commands_on_a_store_that_does_not_exist_create_nothing(cli, isolated_env) -> None:
    for args in (("stats", "--json"), ("list", "--json"), ("prune",), ("clear",)):
        result = cli("cache", *args)
        assert result.exit_code == 0, result.stderr
    assert json.loads(cli("cache", "stats", "--json").stdout)["entries"] == 0
    assert not (isolated_env / "prefix-cache").exists()
