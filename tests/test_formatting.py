"""One money rule for every command: builds, costs and analyze-prompt agree."""

import pytest

from foundry.formatting import money, percent


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.0, "$0.0000"),
        (0.00016, "$0.0002"),  # a cache read of ~530 Sonnet tokens is still visible
        (0.1473, "$0.1473"),
        (9.99994, "$9.9999"),
        (10.0, "$10.00"),
        (1234.567, "$1,234.57"),
        (-0.5, "-$0.5000"),  # budget overrun
        (-12.5, "-$12.50"),
    ],
)
def test_money(value, shown):
    assert money(value) == shown


def test_missing_figures_say_so():
    assert money(None) == "n/a"  # unpriced: unknown, the same word in every command
    assert percent(None) == "-" and percent(0.934) == "93%"
