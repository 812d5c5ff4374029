"""The Serve view against a real `foundry serve` (the tiny model on mlx, on CPU): the page
shows the figures that server's /cache/stats gives, fetched by the dashboard's server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.serve_helpers import serving, system_blocks
from tests.test_dashboard_browser import ARGS, CHROMIUM
from tests.test_dashboard_support import get, running_dashboard

pytestmark = pytest.mark.mlx


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"no chromium at {CHROMIUM}: install Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def test_the_serve_view_shows_a_running_serves_cache(
    tiny_model_dir: Path, tmp_path: Path, browser: Browser
) -> None:
    with serving(tiny_model_dir, tmp_path / "serve") as served:
        client = served.client()
        for _ in range(2):  # the second is served from a cache
            client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=4,
                system=system_blocks(),
                messages=[{"role": "user", "content": "hi"}],
            )
        _, _, direct = get(f"{served.url}/cache/stats")
        with running_dashboard(served.db, serve_url=served.url) as dashboard:
            status, _, body = get(f"{dashboard.url}/api/serve")
            assert status == 200 and body["available"] is True
            since = body["stats"]["since_start"]
            assert since["requests"] == direct["since_start"]["requests"] == 2
            assert since["l1_hits"] + since["l2_hits"] + since["disk_hits"] >= 1
            page = browser.new_page()
            page.goto(f"{dashboard.url}/#/serve")
            page.wait_for_selector('body[data-ready="serve"]', state="attached", timeout=15000)
            assert page.inner_text('[data-serve="requests"]') == "2"
            hit = since["hit_rate"]
            assert page.inner_text('[data-serve="hit_rate"]') == f"{100 * hit:.1f}%"
            entries = page.locator('[data-testid="serve-entries"] tbody tr')
            assert entries.count() == len(body["stats"]["l1"]["entries"]) >= 1
            shot = tmp_path / "dashboard-serve.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            page.close()
