"""The six workspace tools' JSON schemas, in one fixed order.

Every request of every phase of every build sends these exact ToolSpecs, so the tools part
of the cached prefix is byte-identical and always hits.
"""

from __future__ import annotations

from foundry.backends.base import ToolSpec

PATH_HELP = "Path relative to the working directory (no '..', no absolute paths)."

READ_FILE = ToolSpec(
    name="read_file",
    description=(
        "Read a UTF-8 text file in the working directory. Optional offset (first line, "
        "1-based) and limit (number of lines) read part of a long file."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": PATH_HELP},
            "offset": {"type": "integer", "minimum": 1, "description": "First line (1-based)."},
            "limit": {"type": "integer", "minimum": 1, "description": "Number of lines."},
        },
        "required": ["path"],
        "additionalProperties": False,
    },
)

WRITE_FILE = ToolSpec(
    name="write_file",
    description=(
        "Create or overwrite a file with the given content. Parent directories are created. "
        "Files under .foundry/ and .git/ are managed by the orchestrator and cannot be written."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": PATH_HELP},
            "content": {"type": "string", "description": "The complete new file content."},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    },
)

EDIT_FILE = ToolSpec(
    name="edit_file",
    description=(
        "Replace exactly one occurrence of old_text with new_text in a file. old_text must "
        "match the file byte for byte and occur exactly once; include surrounding lines to "
        "make it unique."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": PATH_HELP},
            "old_text": {"type": "string", "description": "Exact text to replace (unique)."},
            "new_text": {"type": "string", "description": "Replacement text."},
        },
        "required": ["path", "old_text", "new_text"],
        "additionalProperties": False,
    },
)

LIST_FILES = ToolSpec(
    name="list_files",
    description=(
        "List files under a directory of the working directory, recursively, skipping .git "
        "and caches. Optional pattern is a glob matched against the relative path or the "
        "file name (e.g. '*.py')."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Directory to list (default '.')."},
            "pattern": {"type": "string", "description": "Glob filter, e.g. '*.py'."},
        },
        "required": [],
        "additionalProperties": False,
    },
)

RUN_COMMAND = ToolSpec(
    name="run_command",
    description=(
        "Run a shell command in the working directory and return its exit code and combined "
        "output (long output keeps its head and tail). No stdin; secrets are removed from "
        "the environment. timeout_s may lower the default timeout, never raise it."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "Shell command line."},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "description": "Timeout."},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
)

FINISH_PHASE = ToolSpec(
    name="finish_phase",
    description=(
        "End the current phase. summary: one line. report: the phase's markdown artifact, "
        "which the orchestrator saves. The architect phase must also give test_command, the "
        "shell command that runs the project's tests (the orchestrator runs it itself and "
        "judges by its exit code)."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "summary": {
                "type": "string",
                "pattern": r"\S",  # not blank: the orchestrator refuses a blank summary
                "description": "One line: what the phase did.",
            },
            "report": {"type": "string", "description": "Markdown report of the phase."},
            "test_command": {"type": "string", "description": "Architect only: test command."},
        },
        "required": ["summary", "report"],
        "additionalProperties": False,
    },
)

# The order is part of the cached prefix: never reorder without expecting one cache miss.
TOOL_SPECS: tuple[ToolSpec, ...] = (
    READ_FILE,
    WRITE_FILE,
    EDIT_FILE,
    LIST_FILES,
    RUN_COMMAND,
    FINISH_PHASE,
)
TOOL_NAMES: tuple[str, ...] = tuple(spec.name for spec in TOOL_SPECS)


def tool_specs() -> list[ToolSpec]:
    """A fresh list of the same specs (the request type wants a list)."""
    return list(TOOL_SPECS)
