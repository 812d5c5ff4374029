"""The dashboard in a real browser (Debian's chromium driven by Playwright), against a ledger
the test fills: what a person sees. The costs view shows `foundry costs`' numbers, the
overview draws its charts and builds, a running build's phase changes on the page when the
build writes a new progress row, and markup in a task or a tool's detail stays text.
Screenshots go into each test's tmp dir (their paths are printed; run with -s to see them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from foundry.formatting import money
from foundry.ledger import Ledger
from foundry.usage import Usage
from tests.test_dashboard_support import (
    HOSTILE_TASK,
    HOSTILE_TOOL,
    costs_json,
    fill_ledger,
    running_dashboard,
)

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no chromium at {CHROMIUM}: the dashboard's browser tests need Debian's chromium "
            "(sudo apt-get install -y chromium)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    problems: list[str] = []
    # Any script error or CSP violation (markup from the ledger run as HTML would cause one)
    # fails the test.
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    opened.on("console", console)
    opened.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    yield opened
    context.close()
    assert problems == []


def _open(page: Page, url: str, view: str) -> None:
    page.goto(url)
    # The page marks the view drawn on <body> (a selector: CSP forbids the evaluated
    # functions wait_for_function would inject).
    page.wait_for_selector(f'body[data-ready="{view}"]', state="attached", timeout=15000)


def _shot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_the_costs_view_shows_what_foundry_costs_prints(
    page: Page, tmp_path: Path
) -> None:  # fmt: skip
    filled = fill_ledger(tmp_path / "ledger.db")
    expected = costs_json(filled.path, "--since", "29d", "--by", "day")
    by_model = costs_json(filled.path, "--since", "29d", "--by", "model")
    totals = expected["totals"]
    with running_dashboard(filled.path) as server:
        _open(page, f"{server.url}/#/costs", "costs")
        assert page.inner_text('[data-kpi="cost"]') == money(totals["cost_usd"]) + "*"
        assert page.inner_text('[data-kpi="saved"]') == money(totals["saved_usd"])
        assert page.inner_text('[data-kpi="hit"]') == f"{totals['hit_rate_pct']:.1f}%"
        assert page.inner_text('[data-kpi="requests"]') == f"{totals['requests']:,}"
        # One table row per report row, then the totals row.
        periods = page.locator('[data-testid="costs-periods"] tbody tr')
        assert periods.count() == len(expected["rows"]) + 1
        for index, row in enumerate(expected["rows"]):
            cells = periods.nth(index).locator("td")
            assert cells.nth(0).inner_text() == row["label"]
            shown = "local" if row["kind"] == "local" else money(row["cost_usd"])
            assert cells.nth(8).inner_text().rstrip("*") == shown
        models = page.locator('[data-testid="costs-models"] tbody tr td:first-child')
        assert models.all_inner_texts() == [r["label"] for r in by_model["rows"]] + ["Total"]
        # The spend chart has one bar per day that spent money, with the day's figure.
        spent = [r for r in expected["rows"] if r["kind"] == "api" and r["cost_usd"] > 0]
        bars = page.locator('[data-testid="chart-spend"] rect[data-series="spend"]')
        assert bars.count() == len(spent)
        titles = page.locator('[data-testid="chart-spend"] rect[data-series="spend"] title')
        assert (
            titles.nth(0).text_content()
            == f"{spent[0]['key']} · spend: ${spent[0]['cost_usd']:.2f}"
        )
        # Spend by model: one bar per priced model, labelled with its name.
        priced = [r["label"] for r in by_model["rows"] if r["kind"] == "api" and r["cost_usd"]]
        model_bars = page.locator('[data-testid="chart-models"] rect[data-series="spend"]')
        assert [
            model_bars.nth(i).get_attribute("data-label") for i in range(model_bars.count())
        ] == priced
        backend_bars = page.locator('[data-testid="chart-backends"] rect[data-series="spend"]')
        assert backend_bars.count() == 1  # anthropic: mlx is local, openai has no price
        _shot(page, tmp_path / "dashboard-costs.png")


def test_the_overview_draws_builds_and_charts(page: Page, tmp_path: Path) -> None:
    filled = fill_ledger(tmp_path / "ledger.db")
    with running_dashboard(filled.path) as server:
        _open(page, f"{server.url}/", "overview")
        assert page.locator('[data-testid="chart-spend"] svg rect').count() > 0
        assert page.locator('[data-testid="chart-hit"] svg path.line-api').count() == 1
        names = page.locator('[data-testid="latest"] tbody tr td:nth-child(2)').all_inner_texts()
        assert names == ["evil", "todo", "calc"]
        running = page.locator('[data-testid="running"] tbody tr')
        assert running.count() == 1
        assert running.locator("td").nth(1).inner_text() == "builder"
        _shot(page, tmp_path / "dashboard-overview.png")


def test_a_running_builds_phase_changes_live(page: Page, tmp_path: Path) -> None:
    filled = fill_ledger(tmp_path / "ledger.db")
    with running_dashboard(filled.path) as server:
        _open(page, f"{server.url}/#/build/{filled.running}", "builds")
        phase = page.locator('[data-live="phase"]')
        spend = page.locator('[data-live="spend"]')
        expect(phase).to_have_text("builder")
        before = spend.inner_text()
        with Ledger.open(filled.path) as ledger:
            ledger.record_progress(filled.running, phase="test", turn=2, last_tool="run_command",
                                   last_tool_detail="python3 -m pytest -q")  # fmt: skip
            expect(phase).to_have_text("test", timeout=5000)
            expect(page.locator('[data-live="last_tool"]')).to_have_text(
                "run_command python3 -m pytest -q"
            )
            ledger.record_request(
                build_id=filled.running, phase="test", turn=2, backend="anthropic",
                model="claude-haiku-4-5", usage=Usage(input_tokens=20000, output_tokens=4000),
                started_at="2026-12-01T00:00:00.000Z",
            )  # fmt: skip
            totals = ledger.build_totals(filled.running)
            expect(spend).to_have_text(money(totals["cost_usd"]), timeout=5000)
            assert spend.inner_text() != before
            expect(page.locator('[data-live="requests"]')).to_have_text("2")
            _shot(page, tmp_path / "dashboard-live-build.png")
            ledger.finish_build(filled.running, status="completed")
        # The stream ends and the page shows the finished build.
        expect(page.locator("h1 .badge")).to_have_text("completed", timeout=5000)


def test_markup_from_the_ledger_is_shown_as_text(page: Page, tmp_path: Path) -> None:
    filled = fill_ledger(tmp_path / "ledger.db")
    with running_dashboard(filled.path) as server:
        _open(page, f"{server.url}/#/build/{filled.hostile}", "builds")
        assert page.inner_text('[data-testid="task"]') == HOSTILE_TASK
        assert page.inner_text('[data-live="last_tool"]') == f"run_command {HOSTILE_TOOL}"
        assert page.inner_text('[data-live="message"]') == HOSTILE_TASK
        assert page.locator("main .error").first.inner_text() == HOSTILE_TASK
        for tag in ("img", "script", "b"):
            assert page.locator(f"main {tag}").count() == 0, tag
        _open(page, f"{server.url}/#/builds", "builds")
        row = page.locator('[data-testid="builds"] tbody tr', has_text="evil")
        assert row.locator("td.task").inner_text() == HOSTILE_TASK
        assert page.locator("main img").count() == 0
        assert page.title() == "foundry dashboard"
        _shot(page, tmp_path / "dashboard-hostile.png")
