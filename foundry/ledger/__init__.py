"""The usage ledger: a local SQLite file recording every build and model request with its
tokens and cost. All of foundry's SQL lives in this package."""

from foundry.ledger.store import BUILD_STATUSES, Ledger, RecordedRequest, utc_now

__all__ = ["BUILD_STATUSES", "Ledger", "RecordedRequest", "utc_now"]
