"""UTC timestamps in one fixed text form (ISO-8601, milliseconds, Z), so that text order is
time order wherever foundry stores them. Standard library only: cheap to import anywhere."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now as UTC ISO-8601 with milliseconds and Z: "2026-11-22T10:00:00.123Z"."""
    return format_utc(datetime.now(UTC))


def format_utc(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_utc(value: str) -> datetime:
    """Any ISO-8601 timestamp ("...Z", "+00:00", other offsets, with or without fractions)
    as an aware datetime; one without an offset is taken as UTC. ValueError if unparsable."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def normalize_timestamp(value: str) -> str:
    """Any ISO-8601 timestamp as our canonical UTC form, so text order is time order.
    A timestamp without an offset is taken as UTC."""
    return format_utc(parse_utc(value))
