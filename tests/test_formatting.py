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


def _phase_table_text(monkeypatch, columns: str | None) -> str:
    """The end-of-build table printed as a build prints it: on a soft-wrapping console
    whose output is not a terminal (stderr piped into a log)."""
    import io

    from rich.console import Console

    from foundry.orchestrator.display import phase_table
    from foundry.orchestrator.metered import PhaseStats
    from foundry.usage import Usage

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    big = Usage(12_345_678, 2_345_678, 123_456_789, 0, 3_456_789)
    phases = {
        "architect": PhaseStats(usage=big, requests=123, turns=45, cost_usd=1234.56,
                                status="tests_failed"),
        "builder": PhaseStats(usage=big, requests=456, turns=78, cost_usd=2345.67,
                              status="completed"),
    }  # fmt: skip
    total = PhaseStats(usage=big + big, requests=579, cost_usd=3580.23)
    buffer = io.StringIO()
    Console(file=buffer, soft_wrap=True).print(phase_table(phases, total))
    return buffer.getvalue()


def test_the_end_of_build_table_piped_is_never_cut(monkeypatch):
    out = _phase_table_text(monkeypatch, None)
    assert "…" not in out, out
    for cell in ("tests_failed", "24,691,356", "246,913,578", "$3,580.23", "architect"):
        assert cell in out, out
    widths = {len(line) for line in out.splitlines() if "," in line}
    assert max(widths) > 80  # wider than rich's guess, as wide as its content


def test_the_end_of_build_table_respects_columns(monkeypatch):
    """$COLUMNS is the user's word on the width, piped or not (cells are then cut as on a
    terminal that narrow)."""
    out = _phase_table_text(monkeypatch, "60")
    rule = next(line for line in out.splitlines() if "───" in line)
    assert len(rule.rstrip()) <= 60, out
