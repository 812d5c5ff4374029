"""Detecting the test command from the project's files, and builds whose architect named
none: the test phase detects it (and says so), or ends tests_failed when nothing fits."""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from rich.console import Console

from foundry.orchestrator.display import PlainDisplay
from foundry.orchestrator.phases import DETECT_LATER_NOTE, architecture_document
from foundry.orchestrator.phases import saved_test_command as saved
from foundry.orchestrator.test_detect import (
    NO_TEST_COMMAND,
    PYTHON_TEST_COMMAND,
    detect_test_command,
)
from tests.orchestrator_helpers import (
    context_too_long,
    finish,
    ledger_rows,
    run_build,
    text,
    tool,
)

PY_CMD = PYTHON_TEST_COMMAND
NPM = "npm test"
PLACEHOLDER = json.dumps(
    {"scripts": {"test": 'echo "Error: no test specified" && exit 1'}, "name": "x"}
)
PASSING_TEST = "import hello\n\n\ndef test_greet():\n    assert hello.greet() == 'hello'\n"
HELLO = "def greet():\n    return 'hello'\n"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({"README.md": "# hi\n", "hello.py": HELLO}, None),
        ({"test_hello.py": PASSING_TEST}, PY_CMD),
        ({"tests/unit/greet_test.py": ""}, PY_CMD),
        ({"pytest.ini": "[pytest]\n"}, PY_CMD),
        ({"pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n"}, PY_CMD),
        ({"pyproject.toml": "[tool.pytest]\nminversion = '9.0'\n"}, PY_CMD),
        ({"pyproject.toml": "[project]\nname = 'x'\n[tool.ruff]\n"}, None),
        ({"pyproject.toml": "[tool.pytest.ini_options\nbroken"}, None),
        ({"tox.ini": "[tox]\nenvlist = py3\n\n[pytest]\naddopts = -q\n"}, PY_CMD),
        ({"tox.ini": "[tox]\nenvlist = py3\n"}, None),
        ({"setup.cfg": "[metadata]\nname = x\n[tool:pytest]\ntestpaths = t\n"}, PY_CMD),
        ({"setup.cfg": "[metadata]\nname = x\n"}, None),
        # Names that look like tests but are not pytest's default patterns.
        ({"test.py": "", "testing.py": "", "conftest.py": "", "test_data.txt": ""}, None),
        ({"package.json": json.dumps({"scripts": {"test": "jest"}})}, NPM),
        ({"package.json": PLACEHOLDER}, None),
        ({"package.json": json.dumps({"scripts": {"test": "  "}})}, None),
        ({"package.json": json.dumps({"scripts": {"build": "tsc"}})}, None),
        ({"package.json": json.dumps({"scripts": ["test"]})}, None),
        ({"package.json": "[1, 2]"}, None),
        ({"package.json": "{not json"}, None),
        ({"go.mod": "module example.com/x\n\ngo 1.22\n"}, "go test ./..."),
        ({"Cargo.toml": "[package]\nname = 'x'\n"}, "cargo test"),
        # Manifests only count at the top level.
        ({"sub/go.mod": "module x\n", "sub/Cargo.toml": ""}, None),
        # Test files in skipped directories are someone else's (or foundry's own).
        (
            {
                ".venv/lib/site/test_a.py": "",
                "venv/test_b.py": "",
                "node_modules/pkg/test_c.py": "",
                ".git/hooks/test_d.py": "",
                ".foundry/test_e.py": "",
                ".tox/py3/test_f.py": "",
                "build/lib/test_g.py": "",
                "__pycache__/test_h.py": "",
            },
            None,
        ),
        # Tie-breaks: Python, then npm, then Go, then Cargo.
        ({"package.json": json.dumps({"scripts": {"test": "jest"}}), "t/test_a.py": ""}, PY_CMD),
        ({"package.json": json.dumps({"scripts": {"test": "jest"}}), "go.mod": ""}, NPM),
        ({"package.json": PLACEHOLDER, "go.mod": ""}, "go test ./..."),
        ({"go.mod": "", "Cargo.toml": ""}, "go test ./..."),
        ({"Cargo.toml": "", "pytest.ini": ""}, PY_CMD),
    ],
)
def test_detection_table(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    assert detect_test_command(tmp_path) == expected
    # Looking only: nothing is created, and the answer does not change.
    assert sorted(p.as_posix() for p in tmp_path.rglob("*")) == before
    assert detect_test_command(tmp_path) == expected


def test_detection_edge_cases(tmp_path: Path) -> None:
    assert detect_test_command(tmp_path / "missing") is None
    (tmp_path / "file").write_text("x")
    assert detect_test_command(tmp_path / "file") is None
    # A directory named like a test file is not a test file; a symlinked dir is not walked.
    (tmp_path / "d" / "test_dir.py").mkdir(parents=True)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "t").mkdir(parents=True)
    (outside / "t" / "test_out.py").write_text("")
    (tmp_path / "d" / "link").symlink_to(outside / "t", target_is_directory=True)
    assert detect_test_command(tmp_path / "d") is None
    (tmp_path / "d" / "test_real.py").write_text("")
    assert detect_test_command(tmp_path / "d") == PY_CMD


def test_architecture_document_without_a_command_says_it_will_be_detected() -> None:
    doc = architecture_document("# Arch\n", None)
    assert DETECT_LATER_NOTE in doc and "foundry-test-command" not in doc


@pytest.fixture
def venv_python_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python3` in the detected command must be an interpreter that has pytest."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "python3").exists()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def silent_architect(builder_files: dict[str, str]) -> list:
    """An architect that never names a test command, then a builder writing `builder_files`."""
    writes = [tool("write_file", path=p, content=c) for p, c in builder_files.items()]
    return [
        ([finish("design", "# Arch\nhello.py\n")], "tool_use"),  # refused once
        ([finish("design", "# Arch\nhello.py\n")], "tool_use"),  # accepted
        (writes, "tool_use"),
        ([finish("wrote it", "# Build log\n")], "tool_use"),
    ]


def display() -> tuple[PlainDisplay, io.StringIO]:
    buf = io.StringIO()
    return PlainDisplay(Console(file=buf, width=200), None), buf


PHASES = ("architect", "builder", "test", "deploy")


def test_a_build_without_a_named_test_command_detects_it(
    tmp_path: Path, venv_python_first: None
) -> None:
    events, buf = display()
    steps = silent_architect({"hello.py": HELLO, "test_hello.py": PASSING_TEST})
    result, backend, db = run_build(tmp_path, steps, phases=PHASES, events=events)
    assert result.status == "completed" and result.exit_code == 0, result.error
    workdir = tmp_path / "hello"
    refusal = backend.requests[1].messages[-1].content[0]
    assert refusal["is_error"] and "detect" in refusal["content"]
    architecture = (workdir / ".foundry" / "architecture.md").read_text()
    assert DETECT_LATER_NOTE in architecture and saved(workdir) is None
    results = (workdir / ".foundry" / "test-results-1.md").read_text()
    assert "# Test run 1: passed" in results
    assert f"test command detected by foundry: `{PY_CMD}`" in results
    assert "1 passed" in results  # pytest really ran the builder's test
    out = buf.getvalue()
    assert "foundry will detect one" in out
    assert f"test: test command detected by foundry: `{PY_CMD}`" in out
    summary = result.summary
    assert summary["test_command"] == PY_CMD and summary["tests_passed"] is True
    assert summary["phases_completed"] == list(PHASES) and summary["commit"]
    saved_summary = json.loads((workdir / ".foundry" / "summary.json").read_text())
    assert saved_summary["test_command"] == PY_CMD
    assert ledger_rows(db, "builds")[0]["status"] == "completed"


def test_nothing_detectable_ends_tests_failed_without_deploying(tmp_path: Path) -> None:
    stale = tmp_path / "hello" / ".foundry" / "test-results-1.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("# Test run 1: passed\n")
    events, buf = display()
    result, _, db = run_build(
        tmp_path, silent_architect({"hello.py": HELLO}), phases=PHASES, events=events
    )
    assert result.status == "tests_failed" and result.exit_code == 3
    assert result.error == NO_TEST_COMMAND
    summary = result.summary
    assert summary["error"] == NO_TEST_COMMAND and summary["test_command"] is None
    assert summary["tests_passed"] is None and summary["test_iterations"] == 0
    assert summary["phases_completed"] == ["architect", "builder"]
    assert summary["commit"] is None
    assert {p["name"]: p["status"] for p in summary["phases"]}["test"] == "failed"
    assert not stale.exists() and not (tmp_path / "hello" / ".git").exists()
    assert NO_TEST_COMMAND in buf.getvalue()
    build = ledger_rows(db, "builds")[0]
    assert (build["status"], build["error"]) == ("tests_failed", NO_TEST_COMMAND)


def test_a_command_the_architect_named_wins_over_detection(tmp_path: Path) -> None:
    # The named command passes; pytest (what detection would pick) would fail.
    command = f"{shlex.quote(sys.executable)} check.py"
    steps = [
        ([finish("design", "# Arch\n", test_command=command)], "tool_use"),
        (
            [
                tool("write_file", path="check.py", content="print('ok')\n"),
                tool("write_file", path="test_bad.py", content="def test_x():\n    assert 0\n"),
            ],
            "tool_use",
        ),
        ([finish("wrote it", "# Build log\n")], "tool_use"),
    ]
    result, _, _ = run_build(tmp_path, steps, phases=PHASES)
    assert result.status == "completed", result.error
    assert result.summary["test_command"] == command
    results = (tmp_path / "hello" / ".foundry" / "test-results-1.md").read_text()
    assert "detected by foundry" not in results and f"`{command}`" in results


def test_an_earlier_builds_command_wins_when_the_architect_names_none(tmp_path: Path) -> None:
    command = f"{shlex.quote(sys.executable)} check.py"
    foundry_dir = tmp_path / "hello" / ".foundry"
    foundry_dir.mkdir(parents=True)
    (foundry_dir / "architecture.md").write_text(architecture_document("# Old\n", command))
    steps = silent_architect({"check.py": "print('ok')\n", "test_bad.py": "assert 0\n"})
    result, _, _ = run_build(tmp_path, steps, phases=("architect", "builder", "test"))
    assert result.status == "completed", result.error
    assert result.summary["test_command"] == command
    assert saved(tmp_path / "hello") == command  # the new architecture.md keeps it


def test_an_architect_at_its_turn_limit_no_longer_fails_the_build(
    tmp_path: Path, venv_python_first: None
) -> None:
    steps = [
        ([text("thinking")], "end_turn"),
        ([tool("list_files")], "tool_use"),
        ([tool("write_file", path="test_ok.py", content="def test_ok():\n    pass\n")], "tool_use"),
        ([finish("wrote it", "# Build log\n")], "tool_use"),
    ]
    result, _, _ = run_build(tmp_path, steps, phases=("architect", "builder", "test"), max_turns=2)
    # The build goes on and the tests pass, but the architect did not finish: incomplete.
    assert result.status == "incomplete", result.error
    assert result.summary["phases_completed"] == ["builder", "test"]
    assert result.phases["architect"].status == "turn_limit"
    architecture = (tmp_path / "hello" / ".foundry" / "architecture.md").read_text()
    assert "limit of 2 turns" in architecture and DETECT_LATER_NOTE in architecture
    assert result.summary["test_command"] == PY_CMD


def test_a_resumed_test_phase_detects_the_command(tmp_path: Path, venv_python_first: None) -> None:
    workdir = tmp_path / "hello"
    workdir.mkdir()
    (workdir / "hello.py").write_text(HELLO)
    (workdir / "test_hello.py").write_text(PASSING_TEST)
    result, backend, _ = run_build(tmp_path, [], phases=("test",))
    assert result.status == "completed", result.error
    assert backend.requests == [] and result.summary["test_command"] == PY_CMD


def test_an_architect_out_of_context_without_a_test_command_goes_on(tmp_path: Path) -> None:
    steps = [
        ([tool("list_files")], "tool_use"),
        *context_too_long(),
        ([finish("built", "# Build log\n")], "tool_use"),
    ]
    result, _, _ = run_build(tmp_path, steps, phases=("architect", "builder"))
    assert result.status == "incomplete", result.error
    assert result.phases["architect"].status == "turn_limit"
    architecture = (tmp_path / "hello" / ".foundry" / "architecture.md").read_text()
    assert "context window at turn 2" in architecture and DETECT_LATER_NOTE in architecture
