"""`foundry dashboard`: a local web page of builds, costs and a running serve (docs/dashboard.md)"""

from __future__ import annotations

from foundry.errors import UsageError


def dashboard() -> None:
    """Watch builds live, and see spend, savings and cache hits over time, in a browser."""
    raise UsageError("foundry dashboard is not written yet", "see docs/dashboard.md")
