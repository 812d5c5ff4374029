"""The working directory as a sandbox, and the workspace tools the model calls.

Every path is resolved inside the root: absolute paths, '..' and symlinks that lead out are
refused. Tool failures come back as ToolOutcome(is_error=True) for the model to see; they
never raise out of `execute`.
"""

from __future__ import annotations

import fnmatch
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from foundry.fsutil import format_size, write_atomic
from foundry.orchestrator.sandbox import Sandbox, unconfined
from foundry.orchestrator.shell import run_command, truncate_middle
from foundry.orchestrator.tools import TOOL_SPECS

# The orchestrator owns these: the model reads them but never writes them.
PROTECTED_DIRS = (".foundry", ".git")
SKIPPED_DIRS = frozenset(
    {
        ".git",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "node_modules",
        ".venv",
        "venv",
        ".tox",
        ".hypothesis",
    }
)
MAX_LISTED = 1000
# read_file and edit_file refuse larger files (with their size): a model reads a big file in
# pieces with run_command (head, sed -n, grep), never by loading all of it here.
MAX_READ_BYTES = 8 * 1024 * 1024
_SCHEMAS = {spec.name: spec.input_schema for spec in TOOL_SPECS}
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
}


class ToolFailure(Exception):
    """A tool call that cannot be done; the message goes back to the model."""


@dataclass
class ToolOutcome:
    content: str
    is_error: bool = False


def validate_input(name: str, args: Any) -> dict[str, Any]:
    """Check a tool call's input against its schema (required keys, types, no extras)."""
    schema = _SCHEMAS.get(name)
    if schema is None:
        raise ToolFailure(f"unknown tool '{name}'; the tools are: {', '.join(_SCHEMAS)}")
    if not isinstance(args, dict):
        raise ToolFailure(f"{name}: the input must be a JSON object")
    props: dict[str, Any] = schema["properties"]
    missing = [key for key in schema["required"] if key not in args]
    if missing:
        raise ToolFailure(f"{name}: missing required argument(s): {', '.join(missing)}")
    extra = sorted(set(args) - set(props))
    if extra:
        raise ToolFailure(
            f"{name}: unknown argument(s): {', '.join(extra)}; allowed: {', '.join(props)}"
        )
    for key, value in args.items():
        expected = props[key]["type"]
        # bool is an int in Python, never in JSON schema.
        if isinstance(value, bool) or not isinstance(value, _JSON_TYPES[expected]):
            article = "an" if expected[0] in "aeiou" else "a"
            raise ToolFailure(
                f"{name}: '{key}' must be {article} {expected}, got {type(value).__name__}"
            )
        if not isinstance(value, int | float):
            continue
        minimum = props[key].get("minimum")
        if minimum is not None and value < minimum:
            raise ToolFailure(f"{name}: '{key}' must be at least {minimum}")
        if props[key].get("exclusiveMinimum") is not None and value <= 0:
            raise ToolFailure(f"{name}: '{key}' must be greater than 0")
    return args


class Workspace:
    def __init__(
        self,
        root: Path,
        *,
        command_timeout_s: float,
        output_limit: int,
        on_tick: Callable[[], None] | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        """`sandbox`: where run_command runs commands (None: unconfined, default settings)."""
        self.root = Path(os.path.realpath(root))
        self.command_timeout_s = command_timeout_s
        self.output_limit = output_limit
        self.on_tick = on_tick
        self.sandbox = sandbox if sandbox is not None else unconfined(self.root)
        self.phase: str | None = None  # the build sets it: the network is a per-phase setting
        self.written: set[str] = set()

    # -- the sandbox ------------------------------------------------------------------
    def resolve(self, path: str, *, for_write: bool = False) -> Path:
        """The real path of `path` inside the root, or ToolFailure saying why not."""
        if not path or not path.strip():
            raise ToolFailure("path is empty")
        if "\x00" in path:
            raise ToolFailure("path contains a NUL byte")
        posix = path.replace("\\", "/")
        if (
            posix.startswith(("/", "~"))
            or os.path.isabs(path)
            or (os.name == "nt" and len(path) > 1 and path[1] == ":")  # C:foo on Windows only
        ):
            raise ToolFailure(f"'{path}' is absolute; use a path relative to the working directory")
        parts = PurePosixPath(posix).parts
        if ".." in parts:
            raise ToolFailure(
                f"'{path}' contains '..'; paths must stay inside the working directory"
            )
        real = Path(os.path.realpath(self.root.joinpath(*parts)))
        if real != self.root and self.root not in real.parents:
            raise ToolFailure(f"'{path}' leads outside the working directory (through a symlink)")
        if for_write:
            rel = real.relative_to(self.root).parts
            if not rel:
                raise ToolFailure(f"'{path}' is the working directory itself, not a file")
            if rel[0] in PROTECTED_DIRS:
                raise ToolFailure(
                    f"'{path}' is under {rel[0]}/, which the orchestrator manages; "
                    "report through finish_phase instead"
                )
        return real

    def relative(self, real: Path) -> str:
        return real.relative_to(self.root).as_posix() or "."

    # -- dispatch ---------------------------------------------------------------------
    def execute(self, name: str, args: Any) -> ToolOutcome:
        """Run one tool call; every failure becomes an error outcome the model sees."""
        try:
            args = validate_input(name, args)
            handler = getattr(self, f"tool_{name}", None)
            if handler is None:
                raise ToolFailure(f"'{name}' is handled by the orchestrator, not the workspace")
            return ToolOutcome(handler(**args))
        except ToolFailure as exc:
            return ToolOutcome(f"error: {exc}", is_error=True)
        except OSError as exc:
            return ToolOutcome(f"error: {exc.strerror or exc}", is_error=True)
        except UnicodeDecodeError:
            return ToolOutcome("error: the file is not UTF-8 text", is_error=True)
        except Exception as exc:  # a tool bug must not end the build; the model sees it
            return ToolOutcome(f"error: {type(exc).__name__}: {exc}", is_error=True)

    # -- the tools --------------------------------------------------------------------
    def _readable(self, path: str) -> Path:
        """A regular file no larger than MAX_READ_BYTES, checked before reading anything."""
        real = self.resolve(path)
        if real.is_dir():
            raise ToolFailure(f"'{path}' is a directory; use list_files")
        if not real.exists():
            raise ToolFailure(f"'{path}' does not exist")
        if not real.is_file():
            raise ToolFailure(f"'{path}' is not a regular file (a pipe, socket or device)")
        size = real.stat().st_size
        if size > MAX_READ_BYTES:
            raise ToolFailure(
                f"'{path}' is {format_size(size)}, over the {format_size(MAX_READ_BYTES)} that "
                "read_file reads; use run_command with head, tail, sed -n 'A,Bp' or grep"
            )
        return real

    def tool_read_file(self, path: str, offset: int = 1, limit: int | None = None) -> str:
        real = self._readable(path)
        with real.open("rb") as handle:
            data = handle.read(MAX_READ_BYTES + 1)  # bounded, even if the file grew since
        if len(data) > MAX_READ_BYTES:
            raise ToolFailure(f"'{path}' grew past {format_size(MAX_READ_BYTES)} while being read")
        if b"\x00" in data[:8192]:
            raise ToolFailure(f"'{path}' is a binary file ({format_size(len(data))})")
        # Only the lines asked for are decoded and kept; the rest are counted.
        wanted: list[bytes] = []
        total = 0
        last = None if limit is None else offset - 1 + limit
        for number, raw in enumerate(io.BytesIO(data), start=1):
            total = number
            if number >= offset and (last is None or number <= last):
                wanted.append(raw)
        if offset > max(total, 1):
            raise ToolFailure(f"offset {offset} is past the end ({total} lines)")
        end = total if last is None else min(total, last)
        text = b"".join(wanted).decode("utf-8", errors="replace")
        if len(text) > self.output_limit:
            text = truncate_middle(text, self.output_limit)
            text += "\n[file truncated in the middle: use offset and limit to read all of it]"
        if offset > 1 or end < total:
            text = f"[lines {offset}-{end} of {total}]\n{text}"
        return text

    def _atomic_write(self, real: Path, content: str) -> None:
        # write_atomic keeps an existing file's mode and writes newlines untranslated.
        write_atomic(real, content)
        self.written.add(self.relative(real))

    def tool_write_file(self, path: str, content: str) -> str:
        real = self.resolve(path, for_write=True)
        if real.is_dir():
            raise ToolFailure(f"'{path}' is a directory")
        existed = real.exists()
        self._atomic_write(real, content)
        verb = "overwrote" if existed else "created"
        return f"{verb} {self.relative(real)} ({len(content.encode('utf-8'))} bytes)"

    def tool_edit_file(self, path: str, old_text: str, new_text: str) -> str:
        real = self.resolve(path, for_write=True)
        if not real.exists():
            raise ToolFailure(f"'{path}' does not exist; use write_file to create it")
        real = self._readable(path)
        if not old_text:
            raise ToolFailure("old_text is empty; give the exact text to replace")
        text = real.read_text(encoding="utf-8", errors="strict")
        count = text.count(old_text)
        if count == 0:
            raise ToolFailure(f"old_text not found in '{path}'; read the file and copy it exactly")
        if count > 1:
            raise ToolFailure(
                f"old_text occurs {count} times in '{path}'; include more context to make it unique"
            )
        self._atomic_write(real, text.replace(old_text, new_text, 1))
        return f"edited {self.relative(real)} (1 replacement)"

    def tool_list_files(self, path: str = ".", pattern: str | None = None) -> str:
        real = self.resolve(path)
        if not real.is_dir():
            raise ToolFailure(f"'{path}' is not a directory")
        found: list[str] = []
        total = 0
        for current, dirs, files in os.walk(real):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                rel = Path(current, name).relative_to(self.root).as_posix()
                if pattern and not (
                    fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(name, pattern)
                ):
                    continue
                total += 1
                if len(found) < MAX_LISTED:
                    found.append(rel)
        if not found:
            return "(no files)" if not pattern else f"(no files match '{pattern}')"
        more = f"\n[{total - MAX_LISTED} more not shown]" if total > MAX_LISTED else ""
        return "\n".join(found) + more

    def tool_run_command(self, command: str, timeout_s: float | None = None) -> str:
        if not command.strip():
            raise ToolFailure("command is empty")
        limit = (
            self.command_timeout_s if timeout_s is None else min(timeout_s, self.command_timeout_s)
        )
        result = run_command(
            command,
            self.root,
            timeout_s=limit,
            output_limit=self.output_limit,
            on_tick=self.on_tick,
            sandbox=self.sandbox,
            network=self.sandbox.network_for(self.phase),
        )
        if result.timed_out:
            raise ToolFailure(result.describe())
        return result.describe()
