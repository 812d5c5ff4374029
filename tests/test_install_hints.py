"""Install hints name a command that works from a checkout, and the distribution's own name for
the package index: PyPI's `foundry` is an unrelated project, so `pip install 'foundry[serve]'`
would install the wrong thing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from foundry.errors import DISTRIBUTION, install_hint

ROOT = Path(__file__).resolve().parent.parent


def test_every_extra_hint_installs_this_checkout_with_the_tested_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert (ROOT / "constraints.txt").is_file()
    for extra in ("mlx", "llamacpp", "serve", "mcp", "otel"):
        assert extra in extras
        hint = install_hint(extra)
        assert f"-c constraints.txt -e '.[{extra}]'" in hint and "checkout" in hint
        assert f"pip install '{DISTRIBUTION}[{extra}]'" in hint


def test_the_hints_name_the_distribution_pyproject_builds() -> None:
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == DISTRIBUTION


def test_no_hint_or_doc_installs_the_unrelated_pypi_foundry() -> None:
    wrong = re.compile(r"pip install ['\"]?foundry\[")
    texts = [*ROOT.joinpath("foundry").rglob("*.py"), *ROOT.joinpath("docs").glob("*.md")]
    texts.append(ROOT / "README.md")
    offenders = [str(p.relative_to(ROOT)) for p in texts if wrong.search(p.read_text())]
    assert offenders == []
