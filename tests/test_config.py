"""cache_config.json: schema, discovery, clear errors, and where user data lives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundry.config import (
    FoundryConfig,
    foundry_home,
    ledger_path,
    load_config,
    parse_config,
)
from foundry.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_packaged_default_equals_schema_defaults() -> None:
    # The shipped file documents every key; it must say exactly what the code defaults to.
    packaged = json.loads((REPO_ROOT / "cache_config.json").read_text())
    assert packaged == FoundryConfig().model_dump(mode="json")


def test_discovery_prefers_explicit_then_cwd_then_packaged(tmp_path: Path) -> None:
    assert load_config().source == "<packaged cache_config.json>"
    Path("cache_config.json").write_text(json.dumps({"caching": {"ttl": "1h"}}))
    local = load_config()
    assert local.caching.ttl == "1h" and local.source.endswith("cache_config.json")
    explicit = tmp_path / "other.json"
    explicit.write_text(json.dumps({"caching": {"ttl": "5m"}, "budgets": {"daily_usd": 2}}))
    chosen = load_config(explicit)
    assert chosen.caching.ttl == "5m" and chosen.budgets.daily_usd == 2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cachng": {}}, "unknown key 'cachng' (did you mean 'caching'?)"),
        ({"caching": {"tll": "5m"}}, "unknown key 'caching.tll' (did you mean 'ttl'?)"),
        (
            {"models": {"claude-x": {"inptu": 1}}},
            "unknown key 'models.claude-x.inptu' (did you mean 'input'?)",
        ),
        ({"caching": {"ttl": "10m"}}, "'caching.ttl': Input should be '5m' or '1h'"),
        ({"version": 2}, "unsupported version 2"),
        ({"budgets": {"daily_usd": -1}}, "'budgets.daily_usd'"),
        ({"caching": {"boundary_marker": "a\nb"}}, "must be a non-empty single line"),
        ([1, 2], "the top level must be a JSON object"),
    ],
)
def test_bad_config_names_the_problem(data: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.json")
    assert expected in str(info.value)
    assert str(info.value).startswith("cfg.json")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"caching": {"ttl": "5m",}}')
    with pytest.raises(ConfigError, match=r"broken.json:1:\d+: invalid JSON"):
        load_config(broken)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"x": "\xe9"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


def test_paths_follow_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    assert foundry_home() == tmp_path / "home"
    assert ledger_path() == tmp_path / "home" / "foundry.db"
    config = parse_config({"ledger": {"path": str(tmp_path / "cfg.db")}}, "c")
    assert ledger_path(config) == tmp_path / "cfg.db"
    monkeypatch.setenv("FOUNDRY_DB", str(tmp_path / "env.db"))
    assert ledger_path(config) == tmp_path / "env.db"
    assert ledger_path(config, tmp_path / "flag.db") == tmp_path / "flag.db"
