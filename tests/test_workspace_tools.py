"""The workspace sandbox and tools: every escape attempt is refused with an error the model
sees, malformed input is an error result, and run_command is bounded and secret-free."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from foundry.orchestrator.shell import is_secret_name, run_command, scrubbed_env, truncate_middle
from foundry.orchestrator.tools import TOOL_NAMES, TOOL_SPECS
from foundry.orchestrator.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "work"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("top secret", encoding="utf-8")
    return Workspace(root, command_timeout_s=10, output_limit=2000)


def err(ws: Workspace, name: str, args: object) -> str:
    outcome = ws.execute(name, args)
    assert outcome.is_error, outcome.content
    return outcome.content


def ok(ws: Workspace, name: str, args: object) -> str:
    outcome = ws.execute(name, args)
    assert not outcome.is_error, outcome.content
    return outcome.content


def test_tool_specs_are_fixed_and_deterministic() -> None:
    assert TOOL_NAMES == (
        "read_file",
        "write_file",
        "edit_file",
        "list_files",
        "run_command",
        "finish_phase",
    )
    for spec in TOOL_SPECS:
        assert spec.input_schema["type"] == "object"
        assert spec.input_schema["additionalProperties"] is False
        assert set(spec.input_schema["required"]) <= set(spec.input_schema["properties"])


@pytest.mark.parametrize("tool", ["read_file", "write_file", "edit_file", "list_files"])
@pytest.mark.parametrize(
    "path", ["../secret.txt", "sub/../../secret.txt", "..", "a/../b", "/etc/passwd", "~/x"]
)
def test_parent_and_absolute_paths_are_refused(ws: Workspace, tool: str, path: str) -> None:
    args = {"path": path, "content": "x", "old_text": "a", "new_text": "b"}
    args = {k: v for k, v in args.items() if k in _props(tool)}
    message = err(ws, tool, args)
    assert "absolute" in message or "'..'" in message


def _props(tool: str) -> set[str]:
    return set(next(s for s in TOOL_SPECS if s.name == tool).input_schema["properties"])


def test_symlinks_leading_out_are_refused(ws: Workspace, tmp_path: Path) -> None:
    (ws.root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (ws.root / "outdir").symlink_to(tmp_path)
    (ws.root / "dangling").symlink_to(tmp_path / "not-yet")
    assert "outside" in err(ws, "read_file", {"path": "link.txt"})
    assert "outside" in err(ws, "read_file", {"path": "outdir/secret.txt"})
    assert "outside" in err(ws, "write_file", {"path": "outdir/new.txt", "content": "x"})
    assert "outside" in err(ws, "write_file", {"path": "dangling", "content": "x"})
    assert "outside" in err(
        ws, "edit_file", {"path": "link.txt", "old_text": "top", "new_text": "no"}
    )
    assert "outside" in err(ws, "list_files", {"path": "outdir"})
    assert not (tmp_path / "new.txt").exists() and not (tmp_path / "not-yet").exists()
    assert (tmp_path / "secret.txt").read_text() == "top secret"


def test_symlinks_inside_the_root_are_followed(ws: Workspace) -> None:
    (ws.root / "real.txt").write_text("inside\n")
    (ws.root / "alias.txt").symlink_to(ws.root / "real.txt")
    assert ok(ws, "read_file", {"path": "alias.txt"}) == "inside\n"


def test_the_orchestrators_directories_are_read_only(ws: Workspace) -> None:
    (ws.root / ".foundry").mkdir()
    (ws.root / ".foundry" / "summary.json").write_text("{}")
    assert ok(ws, "read_file", {"path": ".foundry/summary.json"}) == "{}"
    for path in (".foundry/summary.json", ".foundry/x.md", ".git/config", "./.git/hooks/x"):
        assert "orchestrator" in err(ws, "write_file", {"path": path, "content": "x"})
    assert "orchestrator" in err(
        ws, "edit_file", {"path": ".foundry/summary.json", "old_text": "{", "new_text": "["}
    )
    assert "working directory itself" in err(ws, "write_file", {"path": ".", "content": "x"})


def test_write_read_edit_list(ws: Workspace) -> None:
    assert "created" in ok(ws, "write_file", {"path": "pkg/mod.py", "content": "a = 1\nb = 2\n"})
    assert "overwrote" in ok(ws, "write_file", {"path": "pkg/mod.py", "content": "a = 1\nb = 2\n"})
    assert ok(ws, "read_file", {"path": "pkg/mod.py"}) == "a = 1\nb = 2\n"
    assert ok(ws, "read_file", {"path": "pkg/mod.py", "offset": 2, "limit": 1}) == (
        "[lines 2-2 of 2]\nb = 2\n"
    )
    assert "1 replacement" in ok(
        ws, "edit_file", {"path": "pkg/mod.py", "old_text": "b = 2", "new_text": "b = 3"}
    )
    assert (ws.root / "pkg/mod.py").read_text() == "a = 1\nb = 3\n"
    (ws.root / "__pycache__").mkdir()
    (ws.root / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    (ws.root / "README.md").write_text("hi")
    assert ok(ws, "list_files", {}) == "README.md\npkg/mod.py"
    assert ok(ws, "list_files", {"pattern": "*.py"}) == "pkg/mod.py"
    assert ok(ws, "list_files", {"path": "pkg"}) == "pkg/mod.py"
    assert ws.written == {"pkg/mod.py"}


def test_edit_file_needs_an_exact_unique_match(ws: Workspace) -> None:
    (ws.root / "f.txt").write_text("x\nx\ny\n")
    assert "2 times" in err(ws, "edit_file", {"path": "f.txt", "old_text": "x", "new_text": "z"})
    assert "not found" in err(ws, "edit_file", {"path": "f.txt", "old_text": "q", "new_text": "z"})
    assert "empty" in err(ws, "edit_file", {"path": "f.txt", "old_text": "", "new_text": "z"})
    assert "does not exist" in err(
        ws, "edit_file", {"path": "nope.txt", "old_text": "a", "new_text": "b"}
    )
    assert (ws.root / "f.txt").read_text() == "x\nx\ny\n"


def test_read_file_refuses_a_huge_file_by_its_size_without_reading_it(ws: Workspace) -> None:
    import time
    import tracemalloc

    with (ws.root / "sparse.bin").open("wb") as handle:
        handle.truncate(2 * 1024**3)  # 2 GiB of nothing on disk
    tracemalloc.start()
    started = time.monotonic()
    message = err(ws, "read_file", {"path": "sparse.bin", "limit": 1})
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "'sparse.bin' is 2.0 GiB, over the 8.0 MiB that read_file reads" in message
    assert "head" in message  # says what to do instead
    assert elapsed < 1 and peak < 1024**2
    assert "2.0 GiB" in err(
        ws, "edit_file", {"path": "sparse.bin", "old_text": "a", "new_text": "b"}
    )


def test_read_file_keeps_only_the_lines_asked_for(ws: Workspace) -> None:
    from foundry.orchestrator.workspace import MAX_READ_BYTES

    line = "x" * 99 + "\n"
    (ws.root / "big.txt").write_text(line * (MAX_READ_BYTES // 100 - 1))
    text = ok(ws, "read_file", {"path": "big.txt", "offset": 5, "limit": 2})
    assert text == f"[lines 5-6 of {MAX_READ_BYTES // 100 - 1}]\n{line}{line}"
    (ws.root / "over.txt").write_text(line * (MAX_READ_BYTES // 100 + 1))
    assert "over the 8.0 MiB" in err(ws, "read_file", {"path": "over.txt", "limit": 1})
    os.mkfifo(ws.root / "pipe")
    assert "not a regular file" in err(ws, "read_file", {"path": "pipe"})


def test_read_file_errors(ws: Workspace) -> None:
    (ws.root / "d").mkdir()
    (ws.root / "bin").write_bytes(b"\x00\x01\x02")
    assert "does not exist" in err(ws, "read_file", {"path": "missing.txt"})
    assert "directory" in err(ws, "read_file", {"path": "d"})
    assert "binary" in err(ws, "read_file", {"path": "bin"})
    (ws.root / "big.txt").write_text("".join(f"line {i}\n" for i in range(2000)))
    text = ok(ws, "read_file", {"path": "big.txt"})
    assert "line 0\n" in text and "line 1999\n" in text and "omitted" in text
    assert len(text) < 2300


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("read_file", {}, "missing required argument(s): path"),
        ("read_file", {"path": 3}, "'path' must be a string"),
        ("read_file", {"path": "a", "offset": "2"}, "'offset' must be an integer"),
        ("read_file", {"path": "a", "offset": True}, "'offset' must be an integer"),
        ("read_file", {"path": "a", "offset": 0}, "at least 1"),
        ("write_file", {"path": "a"}, "missing required argument(s): content"),
        ("write_file", {"path": "a", "content": "x", "mode": "w"}, "unknown argument(s): mode"),
        ("run_command", {"command": "true", "timeout_s": -1}, "greater than 0"),
        ("run_command", ["ls"], "must be a JSON object"),
        ("delete_everything", {}, "unknown tool"),
        ("finish_phase", {"summary": "s", "report": "r"}, "handled by the orchestrator"),
    ],
)
def test_malformed_input_is_an_error_result(ws: Workspace, name, args, expected) -> None:
    assert expected in err(ws, name, args)


def test_run_command_runs_in_the_root_with_an_allow_list_environment(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-should-not-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-should-not-leak")
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("HARMLESS_SETTING", "not-named-so-not-passed")
    monkeypatch.setenv("LANG", "C.UTF-8")
    out = ok(ws, "run_command", {"command": "pwd; env"})
    assert str(ws.root) in out and "exit code 0" in out
    assert "LANG=C.UTF-8" in out and f"PATH={os.environ['PATH']}" in out
    for leaked in (
        "sk-ant-should-not-leak",
        "ghp-should-not-leak",
        "hunter2",
        "aws-secret",
        "not-named-so-not-passed",
    ):
        assert leaked not in out


def test_run_command_reports_failures_and_timeouts(ws: Workspace) -> None:
    assert "exit code 3" in ok(ws, "run_command", {"command": "echo oops; exit 3"})
    message = err(ws, "run_command", {"command": "sleep 30", "timeout_s": 0.6})
    assert "timed out" in message
    assert "empty" in err(ws, "run_command", {"command": "  "})


def test_run_command_keeps_head_and_tail_of_long_output(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(100000): print(f'row {i}')\n"
    result = run_command(
        f'{sys.executable} -c "{script}"', tmp_path, timeout_s=30, output_limit=1000
    )
    assert result.passed
    assert result.output.startswith("row 0\n")
    assert result.output.rstrip().endswith("row 99999")
    assert "characters omitted" in result.output and len(result.output) < 1100


def test_run_command_kills_background_children_at_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    result = run_command(
        f"(sleep 1; touch {marker}) & sleep 30", tmp_path, timeout_s=0.6, output_limit=100
    )
    assert result.timed_out and result.exit_code is None
    import time

    time.sleep(1.3)
    assert not marker.exists()


def test_secret_names_and_truncation() -> None:
    for name in (
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "GH_TOKEN",
        "X_SECRET",
        "MYPASSWORD",
        "ANTHROPIC_BASE_URL",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        assert is_secret_name(name), name
    for name in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV"):
        assert not is_secret_name(name), name
    assert scrubbed_env({"PATH": "/bin", "API_KEY": "x"}) == {"PATH": "/bin"}
    assert truncate_middle("abcdefghij", 4) == "ab\n[... 6 characters omitted ...]\nij"
    assert truncate_middle("abc", 4) == "abc"


def test_workspace_root_may_itself_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    ws = Workspace(tmp_path / "alias", command_timeout_s=5, output_limit=100)
    assert ok(ws, "write_file", {"path": "a.txt", "content": "x"}).startswith("created")
    assert (real / "a.txt").read_text() == "x"
    assert os.path.realpath(ws.root) == str(real)


def test_an_interrupt_kills_the_commands_process_group(tmp_path: Path) -> None:
    import time

    marker = tmp_path / "late"

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_command(
            f"(sleep 1; touch {marker}) & sleep 30",
            tmp_path,
            timeout_s=30,
            output_limit=100,
            on_tick=interrupt,
        )
    time.sleep(1.3)
    assert not marker.exists()


def test_a_colon_in_a_name_is_an_ordinary_file_on_posix(ws: Workspace) -> None:
    # "a:b" was refused as absolute (a Windows drive) on every platform.
    assert "created a:b" in ok(ws, "write_file", {"path": "a:b", "content": "x"})
    assert (ws.root / "a:b").read_text() == "x"
