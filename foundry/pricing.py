"""Model prices and cache minimums (foundry/data/pricing.json + cache_config.json overrides),
and the cost of one request. No I/O beyond reading the packaged table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from foundry.errors import PricingError

if TYPE_CHECKING:
    from foundry.config import FoundryConfig
    from foundry.usage import Usage

_DATED_SUFFIX = re.compile(r"-(\d{8}|latest)$")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Rates:
    """A priced model's rates in USD per million tokens."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal


@dataclass(frozen=True)
class ModelPrice:
    """Prices in USD per million tokens (None: no sourced price), and the cache minimum."""

    model: str
    input: Decimal | None
    output: Decimal | None
    cache_write_5m: Decimal | None
    cache_write_1h: Decimal | None
    cache_read: Decimal | None
    min_cache_tokens: int | None

    @property
    def rates(self) -> Rates | None:
        """Every price, when every one is sourced; None for an unpriced model."""
        if (
            self.input is None
            or self.output is None
            or self.cache_write_5m is None
            or self.cache_write_1h is None
            or self.cache_read is None
        ):
            return None
        return Rates(
            self.input, self.output, self.cache_write_5m, self.cache_write_1h, self.cache_read
        )

    @property
    def priced(self) -> bool:
        return self.rates is not None


@dataclass(frozen=True)
class Cost:
    cost_usd: float | None
    uncached_cost_usd: float | None
    pricing_version: str
    warning: str | None = None

    @property
    def saved_usd(self) -> float | None:
        if self.cost_usd is None or self.uncached_cost_usd is None:
            return None
        return self.uncached_cost_usd - self.cost_usd


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@lru_cache(maxsize=1)
def _packaged_table() -> dict[str, Any]:
    text = resources.files("foundry.data").joinpath("pricing.json").read_text("utf-8")
    return json.loads(text)


class PricingTable:
    """The packaged table with the user's overrides from cache_config.json applied."""

    def __init__(self, config: FoundryConfig | None = None) -> None:
        table = _packaged_table()
        self.source_version: str = table["version"]
        self.source: str = table["source"]
        mult = {k: Decimal(str(v)) for k, v in table["multipliers"].items()}
        self._prices: dict[str, ModelPrice] = {}
        self._aliases: dict[str, str] = {}
        for model_id, row in table["models"].items():
            self._prices[model_id] = self._derive(model_id, row, mult)
            for alias in row.get("aliases", []):
                self._aliases[alias] = model_id
        self.version = self.source_version
        overrides = config.models if config is not None else {}
        for model_id, override in overrides.items():
            self._apply_override(model_id, override.model_dump(exclude_none=True), mult)
        if overrides:
            # Costs computed with user prices must say so, so history stays explainable.
            self.version = f"{self.source_version}+config"

    @staticmethod
    def _derive(model_id: str, row: dict[str, Any], mult: dict[str, Decimal]) -> ModelPrice:
        base = _dec(row.get("input"))

        def price(key: str) -> Decimal | None:
            if row.get(key) is not None:
                return _dec(row[key])
            return None if base is None else base * mult[key]

        return ModelPrice(
            model=model_id,
            input=base,
            output=_dec(row.get("output")),
            cache_write_5m=price("cache_write_5m"),
            cache_write_1h=price("cache_write_1h"),
            cache_read=price("cache_read"),
            min_cache_tokens=row.get("min_cache_tokens"),
        )

    def _apply_override(
        self, model_id: str, values: dict[str, Any], mult: dict[str, Decimal]
    ) -> None:
        canonical = self.resolve(model_id) or model_id
        current = self._prices.get(canonical)
        row: dict[str, Any] = {}
        if current is not None:
            row = {
                "input": current.input,
                "output": current.output,
                "min_cache_tokens": current.min_cache_tokens,
            }
            # Explicit cache prices stay; derived ones follow a new input price.
            if "input" not in values:
                row |= {
                    "cache_write_5m": current.cache_write_5m,
                    "cache_write_1h": current.cache_write_1h,
                    "cache_read": current.cache_read,
                }
        row |= {k: v for k, v in values.items() if k != "context_window"}
        if row.get("output") is not None and row.get("input") is None:
            raise PricingError(
                f"cache_config.json models.{model_id}: an output price needs an input price too",
                "set 'input' as well",
            )
        self._prices[canonical] = self._derive(canonical, row, mult)

    def resolve(self, model: str) -> str | None:
        """Canonical id for `model`: exact id or alias, then a dated id's family. Never a
        substring guess, which could price Haiku as Opus."""
        for candidate in (model, _DATED_SUFFIX.sub("", model)):
            if candidate in self._prices:
                return candidate
            if candidate in self._aliases:
                return self._aliases[candidate]
        return None

    def get(self, model: str) -> ModelPrice | None:
        canonical = self.resolve(model)
        return self._prices[canonical] if canonical else None

    def require(self, model: str) -> ModelPrice:
        """The model's entry, or a UsageError naming the nearest known ids (a typo such as
        claude-sonet-4-6 must not pass as an unknown model)."""
        price = self.get(model)
        if price is not None:
            return price
        import difflib

        from foundry.errors import UsageError

        known = [*self._prices, *self._aliases]
        close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
        nearest = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(
            f"model '{model}' is not in the pricing table",
            f"{nearest}To use a model foundry does not know, give its prices (and "
            f"min_cache_tokens) under 'models' in cache_config.json",
        )

    def models(self) -> list[ModelPrice]:
        return list(self._prices.values())

    def cost(self, usage: Usage, model: str, *, local: bool = False) -> Cost:
        """Cost of one request, and what it would have cost with no caching at all. A local
        backend's requests cost nothing in money (their saving is prefill time)."""
        if local:
            return Cost(0.0, 0.0, "local")
        price = self.get(model)
        rates = price.rates if price is not None else None
        if rates is None:
            reason = "is not in the pricing table" if price is None else "has no sourced price"
            return Cost(
                None,
                None,
                self.version,
                f"model '{model}' {reason}; its cost is recorded as NULL — set its prices "
                f"under 'models' in cache_config.json",
            )
        cost = (
            usage.input_tokens * rates.input
            + usage.output_tokens * rates.output
            + usage.cache_read_tokens * rates.cache_read
            + usage.cache_write_5m_tokens * rates.cache_write_5m
            + usage.cache_write_1h_tokens * rates.cache_write_1h
        ) / _MILLION
        uncached = (
            usage.total_input_tokens * rates.input + usage.output_tokens * rates.output
        ) / _MILLION
        return Cost(float(cost), float(uncached), self.version)
