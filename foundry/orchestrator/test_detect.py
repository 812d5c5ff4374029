"""Detecting a project's test command from its files, for builds whose architect named none.

Pure and deterministic: it only reads files (never runs anything) and checks the ecosystems
in a fixed order, the first match winning:

1. Python — a pytest configuration at the top level (`pytest.ini`, a `[tool.pytest...]`
   table in `pyproject.toml`, `[pytest]` in `tox.ini`, `[tool:pytest]` in `setup.cfg`) or
   any `test_*.py` / `*_test.py` file in the tree → `python3 -m pytest -q`.
2. Node — a top-level `package.json` whose `scripts.test` is not npm's placeholder → `npm test`.
3. Go — a top-level `go.mod` → `go test ./...`.
4. Rust — a top-level `Cargo.toml` → `cargo test`.

Only regular files count: a link (a model's command may have planted one) is neither followed
nor read, and a file larger than MAX_CONFIG_BYTES is not read either.

Python comes first because it is the default language of the builds foundry runs and a
Python project often carries a `package.json` for tooling, rarely the other way round.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

from foundry.fsutil import NotAFile, TooLarge, kind_beneath, read_text_beneath
from foundry.orchestrator.phases import ARTIFACT_DIR
from foundry.orchestrator.workspace import SKIPPED_DIRS

# `python3`, as the orchestrator prompt's own commands spell it.
PYTHON_TEST_COMMAND = "python3 -m pytest -q"
NPM_TEST_COMMAND = "npm test"
GO_TEST_COMMAND = "go test ./..."
CARGO_TEST_COMMAND = "cargo test"

# Directories that hold other people's code, build output or foundry's own files.
DETECT_SKIPPED_DIRS = SKIPPED_DIRS | {
    ARTIFACT_DIR,
    "env",
    ".nox",
    ".eggs",
    "site-packages",
    "build",
    "dist",
    "target",
}
NO_TEST_COMMAND = "no test command was named and none could be detected"
DETECT_LATER = "no test command named; foundry will detect one from the files at test time"
# A bound on the walk, so a huge tree cannot stall the build; found files end it early.
MAX_FILES_SCANNED = 50_000
# pyproject.toml, package.json and the like are small; a larger one is not loaded.
MAX_CONFIG_BYTES = 1024 * 1024
_NPM_PLACEHOLDER = "no test specified"
_TOX_PYTEST = re.compile(r"^\[pytest\]\s*$", re.MULTILINE)
_SETUP_CFG_PYTEST = re.compile(r"^\[tool:pytest\]\s*$", re.MULTILINE)


def _read(root: Path, name: str) -> str | None:
    try:
        return read_text_beneath(root, name, MAX_CONFIG_BYTES)
    except (OSError, NotAFile, TooLarge):
        return None


def _is_file(root: Path, name: str) -> bool:
    """A regular file, not a link to one."""
    return kind_beneath(root, name) == "file"


def is_python_test_file(name: str) -> bool:
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def has_pytest_config(root: Path) -> bool:
    if _is_file(root, "pytest.ini"):
        return True
    pyproject = _read(root, "pyproject.toml")
    if pyproject is not None:
        try:
            tool = tomllib.loads(pyproject).get("tool", {})
        except tomllib.TOMLDecodeError:
            tool = {}
        if isinstance(tool, dict) and "pytest" in tool:
            return True
    tox = _read(root, "tox.ini")
    if tox is not None and _TOX_PYTEST.search(tox):
        return True
    setup_cfg = _read(root, "setup.cfg")
    return setup_cfg is not None and bool(_SETUP_CFG_PYTEST.search(setup_cfg))


def has_python_tests(root: Path) -> bool:
    """Any test_*.py / *_test.py outside skipped directories (symlinks are not followed)."""
    scanned = 0
    for current, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in DETECT_SKIPPED_DIRS)
        for name in names:
            if is_python_test_file(name) and _is_file(Path(current), name):
                return True
        scanned += len(names)
        if scanned >= MAX_FILES_SCANNED:
            return False
    return False


def has_npm_test_script(root: Path) -> bool:
    text = _read(root, "package.json")
    if text is None:
        return False
    try:
        scripts = json.loads(text).get("scripts")
    except (json.JSONDecodeError, AttributeError):
        return False
    test = scripts.get("test") if isinstance(scripts, dict) else None
    return isinstance(test, str) and bool(test.strip()) and _NPM_PLACEHOLDER not in test


def detect_test_command(workdir: Path) -> str | None:
    """The test command the project's files imply, or None when nothing fits."""
    root = Path(workdir)
    if not root.is_dir():
        return None
    if has_pytest_config(root) or has_python_tests(root):
        return PYTHON_TEST_COMMAND
    if has_npm_test_script(root):
        return NPM_TEST_COMMAND
    if _is_file(root, "go.mod"):
        return GO_TEST_COMMAND
    if _is_file(root, "Cargo.toml"):
        return CARGO_TEST_COMMAND
    return None
