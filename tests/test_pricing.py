"""Prices and request costs: hand-computed expectations, every token kind, every priced model."""

from __future__ import annotations

from decimal import Decimal

import pytest

from foundry.config import parse_config
from foundry.errors import PricingError
from foundry.pricing import PricingTable
from foundry.usage import Usage

# (model, input $/MTok, output $/MTok) from DESIGN.md's sourced table.
PRICED = [
    ("claude-opus-5", "5", "25"),
    ("claude-opus-4-8", "5", "25"),
    ("claude-opus-4-7", "5", "25"),
    ("claude-opus-4-6", "5", "25"),
    ("claude-opus-4-5", "5", "25"),
    ("claude-opus-4-1", "15", "75"),
    ("claude-opus-4-0", "15", "75"),
    ("claude-sonnet-5", "2", "10"),
    ("claude-sonnet-4-6", "3", "15"),
    ("claude-sonnet-4-5", "3", "15"),
    ("claude-sonnet-4-0", "3", "15"),
    ("claude-haiku-4-5", "1", "5"),
    ("claude-3-5-haiku", "0.8", "4"),
    ("claude-fable-5", "10", "50"),
    ("claude-mythos-5", "10", "50"),
]
UNPRICED = [
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
    "claude-fable-5-2",
    "claude-mythos-5-2",
    "claude-fable-5-1",
    "claude-mythos-5-1",
    "claude-mythos-preview",
]


@pytest.mark.parametrize(("model", "inp", "out"), PRICED)
def test_multipliers_per_model(model: str, inp: str, out: str) -> None:
    price = PricingTable().get(model)
    assert price is not None and price.priced
    base = Decimal(inp)
    assert price.input == base and price.output == Decimal(out)
    assert price.cache_write_5m == base * Decimal("1.25")
    assert price.cache_write_1h == base * 2  # not the 5m rate: the classic bug
    assert price.cache_read == base / 10


# Hand-computed: one million tokens of one kind costs exactly its per-MTok price.
KINDS = [
    ("input_tokens", lambda i, o: i, lambda i, o: i),
    ("output_tokens", lambda i, o: o, lambda i, o: o),
    ("cache_read_tokens", lambda i, o: i * Decimal("0.1"), lambda i, o: i),
    ("cache_write_5m_tokens", lambda i, o: i * Decimal("1.25"), lambda i, o: i),
    ("cache_write_1h_tokens", lambda i, o: i * 2, lambda i, o: i),
]


@pytest.mark.parametrize(("model", "inp", "out"), PRICED)
@pytest.mark.parametrize(("kind", "expected", "uncached"), KINDS, ids=[k[0] for k in KINDS])
def test_each_token_kind_costs_its_rate(model, inp, out, kind, expected, uncached) -> None:
    usage = Usage(**{kind: 1_000_000})
    cost = PricingTable().cost(usage, model)
    assert Decimal(str(cost.cost_usd)) == expected(Decimal(inp), Decimal(out))
    assert Decimal(str(cost.uncached_cost_usd)) == uncached(Decimal(inp), Decimal(out))
    assert cost.pricing_version == "2026-08" and cost.warning is None


@pytest.mark.parametrize(
    ("model", "usage", "cost", "uncached"),
    [
        # sonnet-4-6 ($3/$15): 1,200 in + 350 out + 40,000 read + 3,000 5m write + 2,000 1h
        # = 0.0036 + 0.00525 + 0.012 + 0.01125 + 0.012 = 0.0441;
        # uncached: 46,200 x $3 + 350 x $15 = 0.1386 + 0.00525 = 0.14385
        ("claude-sonnet-4-6", Usage(1200, 350, 40_000, 3000, 2000), 0.0441, 0.14385),
        # opus-4-1 ($15/$75): 10 in, 20 out, 100,000 1h write = 0.00015 + 0.0015 + 3.0
        ("claude-opus-4-1", Usage(10, 20, 0, 0, 100_000), 3.00165, 1.50165),
        # haiku 3.5 ($0.80/$4): 5,000 read + 1,000 out = 0.0004 + 0.004
        ("claude-3-5-haiku-20241022", Usage(0, 1000, 5000, 0, 0), 0.0044, 0.008),
        ("claude-haiku-4-5", Usage(), 0.0, 0.0),
    ],
)
def test_mixed_requests_hand_computed(model, usage, cost, uncached) -> None:
    result = PricingTable().cost(usage, model)
    assert result.cost_usd == pytest.approx(cost, abs=1e-12)
    assert result.uncached_cost_usd == pytest.approx(uncached, abs=1e-12)
    assert result.saved_usd == pytest.approx(uncached - cost, abs=1e-12)


@pytest.mark.parametrize(
    ("model", "canonical"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4-0"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-6-20260101", "claude-sonnet-4-6"),  # a future dated id -> family
        ("claude-opus-4-8", "claude-opus-4-8"),
    ],
)
def test_dated_ids_and_aliases_resolve_to_their_family(model: str, canonical: str) -> None:
    assert PricingTable().resolve(model) == canonical


@pytest.mark.parametrize(
    "model",
    ["claude-opus", "opus", "claude-haiku-4", "claude-sonnet-4-6-extra", "haiku-4-5", "claude-3-5"],
)
def test_no_substring_guesses(model: str) -> None:
    table = PricingTable()
    assert table.resolve(model) is None
    cost = table.cost(Usage(1000, 1000), model)
    assert cost.cost_usd is None and cost.uncached_cost_usd is None
    assert model in (cost.warning or "") and "NULL" in (cost.warning or "")


@pytest.mark.parametrize("model", UNPRICED)
def test_models_without_a_sourced_price_cost_null_with_a_warning(model: str) -> None:
    table = PricingTable()
    assert table.resolve(model) == model and not table.get(model).priced
    cost = table.cost(Usage(1000, 1000), model)
    assert cost.cost_usd is None and "no sourced price" in (cost.warning or "")


def test_local_backend_costs_zero_money() -> None:
    cost = PricingTable().cost(Usage(5000, 100, 20_000), "smollm2-135m", local=True)
    assert (cost.cost_usd, cost.uncached_cost_usd, cost.warning) == (0.0, 0.0, None)


def test_config_overrides_and_additions() -> None:
    config = parse_config(
        {
            "models": {
                "claude-opus-5-5": {"input": 4, "output": 20},
                "claude-sonnet-4-6": {"input": 2},
                "my-proxy-model": {"input": 1, "output": 2, "cache_read": 0.5},
            }
        },
        "test",
    )
    table = PricingTable(config)
    assert table.version == "2026-08+config"
    # Newly priced: derived cache prices from the multipliers, 1h at 2x.
    cost = table.cost(Usage(0, 0, 0, 0, 1_000_000), "claude-opus-5-5")
    assert cost.cost_usd == pytest.approx(8.0) and cost.pricing_version == "2026-08+config"
    # A new input price moves the derived cache prices; output stays.
    sonnet = table.get("claude-sonnet-4-6-20260101")
    assert sonnet.input == 2 and sonnet.output == 15 and sonnet.cache_write_5m == Decimal("2.5")
    # An explicit cache price wins over the multiplier.
    proxy = table.get("my-proxy-model")
    assert proxy.cache_read == Decimal("0.5") and proxy.cache_write_1h == 2
    assert PricingTable().version == "2026-08"  # the packaged table is untouched


def test_output_price_without_input_is_rejected() -> None:
    config = parse_config({"models": {"new-model": {"output": 3}}}, "test")
    with pytest.raises(PricingError, match="input"):
        PricingTable(config)
