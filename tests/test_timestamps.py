"""The shared UTC timestamp form, and the prefix-cache TTL sweep's reading of it."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from foundry.local.manifest import last_used_epoch
from foundry.local.prefix_store import PrefixCacheStore
from foundry.timestamps import format_utc, normalize_timestamp, parse_utc, utc_now

CANONICAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_utc_now_is_the_canonical_form() -> None:
    assert CANONICAL.match(utc_now())
    moment = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
    assert format_utc(moment) == "2026-11-22T10:00:00.123Z"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-22T10:00:00.123Z",
        "2026-11-22T10:00:00.123+00:00",
        "2026-11-22T11:00:00.123+01:00",
        "2026-11-22T10:00:00.123",
    ],
)
def test_iso_forms_parse_to_the_same_moment(text) -> None:
    assert normalize_timestamp(text) == "2026-11-22T10:00:00.123Z"
    assert parse_utc(text).timestamp() == pytest.approx(1795341600.123)


def test_whole_seconds_with_z_parse() -> None:
    assert normalize_timestamp("2026-11-22T10:00:00Z") == "2026-11-22T10:00:00.000Z"


@pytest.mark.parametrize("bad", ["yesterday", "", None, 12])
def test_an_unparsable_last_used_counts_as_now(bad) -> None:
    assert last_used_epoch(bad, 1000.0) == 1000.0


def test_the_ttl_sweep_reads_both_forms_and_never_evicts_an_unparsable_entry(tmp_path) -> None:
    store = PrefixCacheStore(tmp_path / "s", ttl_days=1)
    now = parse_utc("2026-11-22T10:00:00Z").timestamp()
    stamps = {
        "old-z": "2026-11-20T10:00:00.000Z",
        "old-offset": "2026-11-20T10:00:00+00:00",
        "fresh-z": "2026-11-22T09:00:00.000Z",
        "fresh-offset": "2026-11-22T09:00:00+00:00",
        "garbage": "not a time",
    }
    for key, stamp in stamps.items():
        store.path_for(key).write_bytes(b"x")
        store.manifest.add(key, {"size_bytes": 1})
        with store.manifest._locked() as entries:
            entries[key]["last_used_at"] = stamp
    removed = store.enforce_limits(now=now)
    assert sorted(r["key"] for r in removed) == ["old-offset", "old-z"]
    assert sorted(r["key"] for r in store.entries()) == ["fresh-offset", "fresh-z", "garbage"]
