"""Time zones and calendar periods for reports. Pure Python, no SQL.

A report period (a local day, ISO week or month) is the UTC interval between two local
midnights, computed here with tzdata, so DST changes and odd offsets are exact; SQLite then
sums the rows whose timestamps fall in each interval.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from foundry.errors import UsageError

_RELATIVE = re.compile(r"^(\d+)d$")


@dataclass(frozen=True)
class Zone:
    tz: tzinfo
    name: str


def resolve_zone(name: str | None = None) -> Zone:
    """--tz NAME, else $TZ, else the system's zone (/etc/localtime), else the current offset."""
    if name:
        try:
            return Zone(ZoneInfo(name), name)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(
                f"unknown time zone '{name}'", "use an IANA name such as Europe/Berlin, or UTC"
            ) from None
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        try:
            return Zone(ZoneInfo(env), env)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            key = target.split("zoneinfo/", 1)[1]
            return Zone(ZoneInfo(key), key)
        with localtime.open("rb") as handle:
            return Zone(ZoneInfo.from_file(handle), "local")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        fixed = datetime.now().astimezone().tzinfo or UTC
        return Zone(fixed, str(fixed))


def today(zone: Zone, now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(zone.tz).date()


def parse_day(text: str, zone: Zone, now: datetime | None = None, option: str = "--since") -> date:
    """YYYY-MM-DD, 'today', 'yesterday' or 'Nd' (N days ago), in the report's zone."""
    value = text.strip().lower()
    current = today(zone, now)
    if value == "today":
        return current
    if value == "yesterday":
        return current - timedelta(days=1)
    match = _RELATIVE.match(value)
    if match:
        try:
            return current - timedelta(days=int(match.group(1)))
        except OverflowError:  # e.g. 9999999d: before year 1
            raise UsageError(
                f"{option} {text!r} reaches back before year 1",
                "give fewer days, or a date as YYYY-MM-DD",
            ) from None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a date",
            "use YYYY-MM-DD, 'today', 'yesterday' or Nd (N days ago)",
        ) from None


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def bucket_days(view: str, first: date, last: date) -> list[tuple[str, date, date]]:
    """(key, first local day, day after the last) for each day/week/month from first to last.
    Weeks are ISO weeks keyed by their Monday; months are keyed YYYY-MM."""
    if view == "day":
        start = first
    elif view == "week":
        start = first - timedelta(days=first.weekday())
    elif view == "month":
        start = month_start(first)
    else:
        raise ValueError(f"not a period view: {view!r}")
    periods: list[tuple[str, date, date]] = []
    while start <= last:
        if view == "day":
            end, key = start + timedelta(days=1), start.isoformat()
        elif view == "week":
            end, key = start + timedelta(days=7), start.isoformat()
        else:
            end, key = next_month(start), start.strftime("%Y-%m")
        periods.append((key, start, end))
        start = end
    return periods


def day_start(day: date, zone: Zone) -> datetime:
    """The UTC instant local midnight starts `day` (DST-correct: tzdata decides the offset)."""
    return datetime.combine(day, time(0), tzinfo=zone.tz).astimezone(UTC)
