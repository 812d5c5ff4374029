"""foundry.prompt.analysis: the cache minimum, the boundary recommendation, cache busters, and the
cost projection checked against figures worked out by hand."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from foundry.pricing import ModelPrice, PricingTable
from foundry.prompt import analysis
from foundry.prompt.split import SAMPLE_TASKS, parse_template
from foundry.prompt.template import template_from_text
from foundry.prompt.tokens import estimate_tokens

M = "<<CACHE_BOUNDARY>>"


def price(
    model: str = "test-model",
    base: str | None = "3",
    minimum: int | None = 1024,
) -> ModelPrice:
    """Sonnet-like prices per MTok: input 3, 5m write 3.75 (1.25x), 1h write 6 (2x), read 0.3."""
    b = None if base is None else Decimal(base)
    return ModelPrice(
        model=model,
        input=b,
        output=None if b is None else b * 5,
        cache_write_5m=None if b is None else b * Decimal("1.25"),
        cache_write_1h=None if b is None else b * 2,
        cache_read=None if b is None else b * Decimal("0.1"),
        min_cache_tokens=minimum,
    )


# --------------------------------------------------------------------------- sizes, minimum


def test_part_size():
    assert analysis.part_size("a\nbc", 3) == analysis.PartSize(lines=2, chars=4, tokens=3)
    assert analysis.part_size("", 0).lines == 0


def test_cacheability_meets_misses_and_unknown():
    ok = analysis.cacheability(5000, "m", price(minimum=4096), 0.08)
    assert (ok.meets_minimum, ok.near_minimum, ok.min_cache_tokens) == (True, False, 4096)
    # 4,000 is below 4,096, and within 8% of it: the estimate cannot settle it.
    close = analysis.cacheability(4000, "m", price(minimum=4096), 0.08)
    assert (close.meets_minimum, close.near_minimum) == (False, True)
    exact = analysis.cacheability(4000, "m", price(minimum=4096), 0.0)
    assert exact.near_minimum is False
    unknown = analysis.cacheability(5000, "m", price(minimum=None))
    assert unknown.meets_minimum is None and unknown.known_model
    absent = analysis.cacheability(5000, "nope", None)
    assert absent.meets_minimum is None and not absent.known_model


def test_models_not_cached_uses_the_pricing_table():
    below, unknown = analysis.models_not_cached(2000, PricingTable().models())
    names = {row["model"]: row["min_cache_tokens"] for row in below}
    assert names == {
        "claude-opus-4-7": 2048,
        "claude-opus-4-6": 4096,
        "claude-opus-4-5": 4096,
        "claude-haiku-4-5": 4096,
        "claude-3-5-haiku": 2048,
    }
    assert "claude-fable-5" in unknown and "claude-sonnet-4-6" not in unknown
    assert analysis.models_not_cached(4096, PricingTable().models())[0] == []


# --------------------------------------------------------------------------- the boundary


def advise(text: str) -> analysis.BoundaryAdvice:
    parsed = parse_template(template_from_text(text, "t.txt"))
    variants = [(parsed.render_static(t), parsed.render_dynamic(t)) for t in SAMPLE_TASKS]
    return analysis.boundary_advice(
        variants, parsed.marker_line, parsed.variable_uses(), estimate_tokens
    )


CONSTANT = (
    "This paragraph never changes from one build to the next, so it could be cached with the "
    "static part instead of being sent again, uncached, on every build that runs."
)


def test_boundary_ok_when_the_first_line_below_uses_a_variable():
    advice = advise(f"rules one\nrules two\n{M}\n# Build {{{{ build_name }}}}\n{{{{ task }}}}")
    assert advice.status == "ok"
    assert (advice.static_lines, advice.common_prefix_lines) == (2, 2)
    assert advice.uncached_constant_tokens == 0
    assert advice.recommended_template_line is None


def test_boundary_too_early_names_the_line_to_move_the_marker_to():
    text = f"rules\n{M}\n{CONSTANT}\n\n{CONSTANT}\nName: {{{{ build_name }}}}\n{{{{ task }}}}"
    advice = advise(text)
    assert advice.status == "too_early"
    assert advice.recommended_template_line == 6  # "Name: {{ build_name }}"
    assert advice.common_prefix_lines == 1 + 3  # the static line + 3 constant lines
    assert advice.uncached_constant_tokens == estimate_tokens(f"{CONSTANT}\n\n{CONSTANT}")
    assert "move the marker down to directly above template line 6" in advice.message


def test_a_negligible_constant_heading_below_the_marker_is_fine():
    advice = advise(f"rules\n{M}\n## The task\n\n{{{{ task }}}}")
    assert advice.status == "ok"
    assert 0 < advice.uncached_constant_tokens <= analysis.NEGLIGIBLE_TOKENS


def test_boundary_too_late_when_the_static_part_varies():
    advice = advise(f"rules\nWorking in {{{{ workdir }}}}\nmore rules\n{M}\n{{{{ task }}}}")
    assert advice.status == "too_late"
    assert advice.first_difference_line == 2
    assert advice.recommended_template_line == 2
    assert advice.common_prefix_lines == 1
    assert "directly above template line 2" in advice.message


def test_boundary_too_late_when_a_variable_is_used_without_visible_change():
    advice = advise(f"rules\n{{% if task %}}always{{% endif %}}\n{M}\n{{{{ task }}}}")
    assert advice.status == "too_late"
    assert advice.first_difference_line is None
    assert advice.recommended_template_line == 2


# --------------------------------------------------------------------------- cache busters

BUSTER_TEXT = """\
Generated on 2026-03-14 by the release script.
Built at 2026-03-14T09:26:53Z on ci-runner.internal
Session 3f2a9c1e-1b2c-4d5e-8f90-123456789abc started at 09:26:53
Workspace /home/ada/projects/todo and C:\\Users\\ada\\todo
foundry v1.4.2 talking to 10.0.0.12:8080 and localhost:8000
request req_01HZX9K2M3N4P5Q6 with hash 9f86d081884c7d659a2feaa0c55ad015
Today is March 14, 2026 and the epoch is 1710408413.
Plain text: tests/test_app.py:12:34, 0.1x reads, Python 3 and pytest."""


def test_every_kind_of_cache_buster_is_found_with_its_line():
    found = [(b.line, b.kind, b.text) for b in analysis.find_cache_busters(BUSTER_TEXT)]
    assert found == [
        (1, "date", "2026-03-14"),
        (2, "timestamp", "2026-03-14T09:26:53Z"),
        (2, "hostname", "ci-runner.internal"),
        (3, "UUID", "3f2a9c1e-1b2c-4d5e-8f90-123456789abc"),
        (3, "time", "09:26:53"),
        (4, "absolute path", "/home/ada/projects/todo"),
        (4, "absolute path", "C:\\Users\\ada\\todo"),
        (5, "version string", "v1.4.2"),
        (5, "IP address", "10.0.0.12:8080"),
        (5, "hostname", "localhost:8000"),
        (6, "random id", "req_01HZX9K2M3N4P5Q6"),
        (6, "random id", "9f86d081884c7d659a2feaa0c55ad015"),
        (7, "date", "March 14, 2026"),
        (7, "unix timestamp", "1710408413"),
    ]


def test_busters_report_columns_and_ignore_plain_text():
    [buster] = analysis.find_cache_busters("see it\nrun at 12:30:01 now")
    assert (buster.line, buster.column) == (2, 8)
    assert analysis.find_cache_busters(BUSTER_TEXT.split("\n")[-1]) == []


# --------------------------------------------------------------------------- projection


def test_warm_probability_is_poisson():
    assert analysis.warm_probability(1.0, "5m") == pytest.approx(1 - math.exp(-1 / 12))
    assert analysis.warm_probability(1.0, "1h") == pytest.approx(0.6321205588)
    assert analysis.warm_probability(0.0, "1h") == 0.0


def test_projection_matches_hand_computed_figures():
    # S = 10,000 tokens = 0.01 MTok, R = 20 requests per build, N = 10 builds, 1 build/hour.
    #   uncached:  10 * 20 * 0.01 * $3                                     = $6.000000
    #   5m: p = 1 - e^(-1/12) = 0.0799556
    #       cold build     0.01 * (3.75 + 19 * 0.3)                        = $0.094500
    #       later build    0.01 * (p * 0.3 + (1 - p) * 3.75 + 19 * 0.3)     = $0.0917415
    #       total          0.0945 + 9 * 0.0917415                           = $0.9201738
    #   1h: p = 1 - e^(-1) = 0.6321206
    #       cold build     0.01 * (6 + 19 * 0.3)                            = $0.117000
    #       later build    0.01 * (p * 0.3 + (1 - p) * 6 + 19 * 0.3)        = $0.0809691
    #       total          0.117 + 9 * 0.0809691                            = $0.8457222
    result = analysis.project_model(
        price(), 10_000, builds=10, builds_per_hour=1.0, requests_per_build=20
    )
    assert result.uncached_usd == pytest.approx(6.0)
    assert result.cached_5m_usd == pytest.approx(0.9201738, rel=1e-6)
    assert result.cached_1h_usd == pytest.approx(0.8457222, rel=1e-6)
    assert result.recommended_ttl == "1h"
    assert result.saving_usd == pytest.approx(6.0 - 0.8457222, rel=1e-6)
    assert result.will_cache is True


def test_break_even_points_by_hand():
    # One cold build: write + (R-1)*read < R*base  <=>  R - 1 > (write - base) / (base - read)
    #   5m: (3.75 - 3) / (3 - 0.3) = 0.28 -> from the 2nd request
    #   1h: (6 - 3) / (3 - 0.3)    = 1.11 -> from the 3rd request
    # 1h beats 5m above ln((6 - 0.3) / (3.75 - 0.3)) / (1 - 1/12) = 0.5477 builds/hour.
    result = analysis.project_model(
        price(), 10_000, builds=10, builds_per_hour=1.0, requests_per_build=20
    )
    assert result.break_even_requests == {"5m": 2, "1h": 3}
    assert result.break_even_builds_per_hour == pytest.approx(0.5477367, rel=1e-6)
    # At that rate the two TTLs cost the same; just below it 5m wins, just above 1h.
    rate = result.break_even_builds_per_hour
    at = analysis.project_model(
        price(), 10_000, builds=2, builds_per_hour=rate, requests_per_build=5
    )
    assert at.cached_5m_usd - 0.01 * 3.75 == pytest.approx(at.cached_1h_usd - 0.01 * 6)
    slow = analysis.project_model(
        price(), 10_000, builds=50, builds_per_hour=0.4, requests_per_build=5
    )
    fast = analysis.project_model(
        price(), 10_000, builds=50, builds_per_hour=0.7, requests_per_build=5
    )
    assert (slow.recommended_ttl, fast.recommended_ttl) == ("5m", "1h")


def test_one_hour_writes_are_priced_at_two_times_input_not_the_5m_rate():
    # No later build is ever warm (rate 0) and one request per build: every request writes.
    sonnet = PricingTable().get("claude-sonnet-4-6")
    result = analysis.project_model(
        sonnet, 1_000_000, builds=1, builds_per_hour=0.0, requests_per_build=1
    )
    assert result.uncached_usd == pytest.approx(3.0)
    assert result.cached_5m_usd == pytest.approx(3.75)  # 1.25x
    assert result.cached_1h_usd == pytest.approx(6.0)  # 2x
    assert result.recommended_ttl == "none"  # a single cold request never pays for a write
    assert result.saving_usd == 0.0


def test_below_the_minimum_caching_costs_what_no_caching_costs():
    result = analysis.project_model(
        price(minimum=4096), 2000, builds=10, builds_per_hour=5.0, requests_per_build=20
    )
    assert result.will_cache is False
    assert result.cached_5m_usd == result.cached_1h_usd == result.uncached_usd
    assert result.recommended_ttl == "none"


def test_unknown_minimum_is_projected_as_caching_and_unpriced_models_have_no_figures():
    unknown = analysis.project_model(
        price(minimum=None), 2000, builds=3, builds_per_hour=1.0, requests_per_build=20
    )
    assert unknown.will_cache is None and unknown.cached_5m_usd < unknown.uncached_usd
    unpriced = analysis.project_model(
        price(base=None), 2000, builds=3, builds_per_hour=1.0, requests_per_build=20
    )
    assert not unpriced.priced and unpriced.uncached_usd is None
