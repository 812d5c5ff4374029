"""How figures are shown to people: one rule for money and one for shares, everywhere."""

from __future__ import annotations

# A cost is None when a model has no price: unknown, never $0. Said the same everywhere.
UNPRICED = "n/a"


def money(value: float | None) -> str:
    """Four decimals below $10, where cache reads of a few thousand tokens live (a cent
    would hide them); cents from $10 up, where four decimals are noise."""
    if value is None:
        return UNPRICED
    sign = "-" if value < 0 else ""  # "-$0.5000", as accountants write it, not "$-0.5000"
    amount = abs(value)
    return f"{sign}${amount:,.2f}" if amount >= 10 else f"{sign}${amount:.4f}"


def percent(value: float | None, missing: str = "-") -> str:
    return missing if value is None else f"{value:.0%}"
