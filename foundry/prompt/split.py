"""The orchestrator prompt: load the template, render it in a Jinja sandbox, split it at the
boundary marker, and prove the static part static.

Contract (DESIGN.md): the template has exactly one marker line. Everything above it is the
static part, sent as the cached system prompt of every request of every build, so it may
not depend on any render variable; everything below is the dynamic task part.

How the split works: the marker is found in the template *source*, each half is compiled
and rendered on its own (the dynamic half padded with blank lines so Jinja's line numbers
match the file), and the static half is rendered for two different tasks and compared.
A marker inside a Jinja block, comment or expression leaves a half that does not parse,
which is how that case is caught.

Loading, the Jinja sandbox and error locations live in foundry.prompt.template.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from foundry.errors import TemplateError
from foundry.prompt.template import (
    PHASES,
    TEMPLATE_VARIABLES,
    ParsedTemplate,
    TaskConfig,
    TemplateSource,
    environment,
    template_error,
    text_sha256,
)

DEFAULT_MARKER = "<<CACHE_BOUNDARY>>"

# Deliberately different in every variable (and in every truthiness and branch a template is
# likely to test), so a prefix common to all their renderings really never changes.
SAMPLE_TASKS: tuple[TaskConfig, ...] = (
    TaskConfig("todo", "Build a CLI todo app with tests", "/home/ada/builds/todo"),
    TaskConfig(
        "weather-api",
        "Add a /forecast endpoint to the existing Flask service, with tests",
        "/srv/projects/weather-api",
        mode="existing",
        phases=("builder", "test"),
        max_test_iterations=5,
    ),
    TaskConfig(
        "csv2json",
        "Write a converter from CSV to JSON lines; handle quoted fields",
        "C:\\work\\csv2json",
        phases=("scout", "architect", "builder"),
        max_test_iterations=1,
    ),
    TaskConfig(
        "x",
        "Fix the failing date parsing in utils.py",
        "/tmp/x",
        mode="existing",
        phases=("test", "deploy"),
        max_test_iterations=9,
    ),
)


def contrasting_task(task: TaskConfig) -> TaskConfig:
    """A task that differs from `task` in every variable, for the static-part proof."""
    return TaskConfig(
        name=f"{task.name}-probe",
        task=f"{task.task} (a different task)",
        workdir=f"{task.workdir.rstrip('/')}/probe",
        mode="existing" if task.mode == "new" else "new",
        phases=("builder",) if tuple(task.phases) == PHASES else PHASES,
        max_test_iterations=task.max_test_iterations + 1,
    )


_BLOCK_TAGS = {"if", "for", "macro", "call", "filter", "block", "with", "autoescape", "trans"}


def _enclosing_construct(env: jinja2.Environment, source: str, line: int) -> str | None:
    """What Jinja construct `line` sits inside, e.g. "the 'if' block opened at line 12"."""
    blocks: list[tuple[str, int]] = []  # open {% if %}, {% for %}, {% raw %}... with their lines
    tag: tuple[str, int] | None = None  # an open {{ }} or {% %}: its kind and line
    words: list[str] = []  # the names inside the current {% %}
    comment_line = 0
    try:
        for lineno, kind, value in env.lex(source):
            end = lineno + value.count("\n")
            closing = kind in ("variable_end", "block_end")  # may carry the trimmed newline
            if tag is not None and not closing and tag[1] <= line <= end:
                return f"a Jinja {tag[0]} opened at line {tag[1]}"
            if lineno <= line <= end:
                if kind == "comment":
                    return f"a comment opened at line {comment_line}"
                if kind == "data":
                    return (
                        f"the '{blocks[-1][0]}' block opened at line {blocks[-1][1]}"
                        if blocks
                        else None
                    )
            if kind == "comment_begin":
                comment_line = lineno
            elif kind == "raw_begin":
                blocks.append(("raw", lineno))
            elif kind == "raw_end" and blocks:
                blocks.pop()
            elif kind in ("variable_begin", "block_begin"):
                tag, words = ("expression" if kind == "variable_begin" else "tag", lineno), []
            elif closing:
                if tag is not None and words:
                    head = words[0]
                    if head in _BLOCK_TAGS or (head == "set" and "=" not in words):
                        blocks.append((head, tag[1]))
                    elif head.startswith("end") and blocks:
                        blocks.pop()
                tag = None
            elif tag is not None and (kind == "name" or value == "="):
                words.append(value)
    except jinja2.TemplateSyntaxError:
        return None
    return None


def parse_template(template: TemplateSource, marker: str = DEFAULT_MARKER) -> ParsedTemplate:
    """Check the template's syntax and its single marker line; split the source there."""
    env = environment(template)
    known = {template.name}
    try:
        ast = env.parse(template.text, name=template.name, filename=template.name)
    except jinja2.TemplateSyntaxError as exc:
        lines = template.text.split("\n")
        if exc.lineno and 0 < exc.lineno <= len(lines) and lines[exc.lineno - 1].strip() == marker:
            inside = _enclosing_construct(env, template.text, exc.lineno)
            raise TemplateError(
                f"{template.name}:{exc.lineno}: the boundary marker is inside a Jinja "
                f"expression or tag ({inside or exc.message})",
                "close the expression above the marker",
            ) from None
        raise template_error(exc, known, template.name) from None
    if ast.find(nodes.Extends) is not None:
        raise TemplateError(
            f"{template.name}: template inheritance ({{% extends %}}) is not supported here",
            "use {% include %} for shared parts",
        )

    lines = template.text.split("\n")
    marker_lines = [i for i, text in enumerate(lines, start=1) if text.strip() == marker]
    inline = [
        i for i, text in enumerate(lines, start=1) if marker in text and text.strip() != marker
    ]
    if inline:
        raise TemplateError(
            f"{template.name}:{inline[0]}: the boundary marker {marker} must stand alone on its "
            "line",
            "put it on a line of its own, with nothing else on that line",
        )
    if len(marker_lines) > 1:
        where = ", ".join(str(n) for n in marker_lines)
        raise TemplateError(
            f"{template.name}:{marker_lines[1]}: more than one boundary marker line "
            f"(lines {where})",
            "keep exactly one marker line; everything above it is the static part",
        )
    if not marker_lines:
        raise _missing_marker(template, env, marker)

    index = marker_lines[0] - 1
    parsed = ParsedTemplate(
        source=template,
        marker=marker,
        marker_line=marker_lines[0],
        static_source="\n".join(lines[:index]),
        dynamic_source="\n" * (index + 1) + "\n".join(lines[index + 1 :]),
        env=env,
    )
    for half in (parsed.static_source, parsed.dynamic_source):
        try:
            env.parse(half)
        except jinja2.TemplateSyntaxError as exc:
            inside = _enclosing_construct(env, template.text, parsed.marker_line)
            detail = inside or f"Jinja says: {exc.message}"
            raise TemplateError(
                f"{template.name}:{parsed.marker_line}: the boundary marker is inside a Jinja "
                f"block, comment or expression ({detail})",
                "close every block above the marker, and open blocks again below it",
            ) from None
    return parsed


def _missing_marker(
    template: TemplateSource, env: SandboxedEnvironment, marker: str
) -> TemplateError:
    """No literal marker line: say whether an expression or include produces one."""
    try:
        parsed_whole = ParsedTemplate(template, marker, 0, "", template.text, env)
        rendered = parsed_whole.render_dynamic(SAMPLE_TASKS[0])
    except TemplateError:
        rendered = ""
    for number, text in enumerate(rendered.split("\n"), start=1):
        if marker in text:
            return TemplateError(
                f"{template.name}: the boundary marker {marker} is produced only by an "
                f"expression or include (line {number} of the rendered text)",
                "write the marker literally, on a line of its own, in the template itself",
            )
    return TemplateError(
        f"{template.name}: no boundary marker line {marker}",
        "add the marker on a line of its own where the static part ends (the marker is "
        "caching.boundary_marker in cache_config.json)",
    )


# --------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class SplitPrompt:
    static: str  # the cached system prompt: identical for every build
    dynamic: str  # the task part: the first user turn of a build
    static_sha256: str  # of the static text (UTF-8): the cache identity of the prompt
    template_sha256: str  # of the template and the files it included: its version
    template: str  # where the template came from, for messages
    marker: str
    marker_line: int

    @property
    def sha256(self) -> str:
        return self.static_sha256


def _first_difference(a: str, b: str) -> tuple[int, str, str]:
    la, lb = a.split("\n"), b.split("\n")
    for number, (x, y) in enumerate(zip(la, lb, strict=False), start=1):
        if x != y:
            return number, x, y
    n = min(len(la), len(lb)) + 1
    return n, la[n - 1] if n <= len(la) else "", lb[n - 1] if n <= len(lb) else ""


def _check_marker_not_rendered(parsed: ParsedTemplate, text: str, part: str) -> None:
    for number, line in enumerate(text.split("\n"), start=1):
        if parsed.marker in line:
            raise TemplateError(
                f"{parsed.name}: the rendered {part} part contains the boundary marker (its line "
                f"{number}); an expression or include produces it",
                "the marker must appear exactly once, written literally in the template",
            )


def _responsible_variables(
    parsed: ParsedTemplate, a: TaskConfig, b: TaskConfig, line: int
) -> list[str]:
    """The variables whose value alone changes the static part's `line`: swap one at a time."""

    def line_of(task: TaskConfig) -> str | None:
        lines = parsed.render_static(task).split("\n")
        return lines[line - 1] if line <= len(lines) else None

    base = line_of(a)
    return [
        name
        for name, attr in zip(TEMPLATE_VARIABLES, _TASK_FIELDS, strict=True)
        if line_of(replace(a, **{attr: getattr(b, attr)})) != base
    ]


_TASK_FIELDS = ("name", "task", "workdir", "mode", "phases", "max_test_iterations")


def static_difference(parsed: ParsedTemplate, a: TaskConfig, b: TaskConfig) -> str | None:
    """None when the static part renders the same for tasks `a` and `b`; else a message that
    names the first differing line and the variable(s) used there."""
    first, second = parsed.render_static(a), parsed.render_static(b)
    uses = [u for u in parsed.variable_uses() if u.part == "static"]
    if first == second:
        if not uses:
            return None
        u = uses[0]
        return (
            f"{u.file}:{u.line}: the static part (above the marker at line {parsed.marker_line}) "
            f"uses the variable '{u.name}'; it must not depend on any render variable"
        )
    line, x, y = _first_difference(first, second)
    names = _responsible_variables(parsed, a, b, line) or sorted({u.name for u in uses})
    responsible = [u for u in uses if u.name in names]
    where = [f"'{u.name}' at {u.file}:{u.line}" for u in responsible]
    used = (
        f"; variable(s) used there: {', '.join(where) or ', '.join(names)}"
        if names
        else "; it uses no render variable, so its output is not deterministic"
    )
    at = f"{responsible[0].file}:{responsible[0].line}" if responsible else parsed.name
    return (
        f"{at}: the static part (above the marker at line {parsed.marker_line}) changes with "
        f"the task: first difference at its rendered line {line}: {x[:80]!r} vs {y[:80]!r}"
        f"{used}"
    )


def render_split(
    template: TemplateSource,
    task: TaskConfig | None = None,
    *,
    marker: str = DEFAULT_MARKER,
) -> SplitPrompt:
    """Render `template` for `task` (default: a sample task) and split it at the marker.

    Raises TemplateError with file and line for every problem listed in the module
    docstring, including a static part that changes with the task.
    """
    parsed = parse_template(template, marker)
    task = task or SAMPLE_TASKS[0]
    static = parsed.render_static(task)
    dynamic = parsed.render_dynamic(task)
    check_parts(parsed, static, dynamic)
    problem = static_difference(parsed, task, contrasting_task(task))
    if problem:
        raise TemplateError(problem, "move the marker above the first line that uses a variable")
    return SplitPrompt(
        static=static,
        dynamic=dynamic,
        static_sha256=text_sha256(static),
        template_sha256=parsed.template_sha256(),
        template=parsed.name,
        marker=marker,
        marker_line=parsed.marker_line,
    )


def check_parts(parsed: ParsedTemplate, static: str, dynamic: str) -> None:
    """Neither rendered part may be empty, and neither may contain the marker."""
    if not static.strip():
        raise TemplateError(
            f"{parsed.name}:{parsed.marker_line}: the static part (above the marker) is empty",
            "the instructions that never change belong above the marker",
        )
    if not dynamic.strip():
        raise TemplateError(
            f"{parsed.name}:{parsed.marker_line}: the dynamic part (below the marker) is empty",
            "render the task (build name, task, working directory...) below the marker",
        )
    _check_marker_not_rendered(parsed, static, "static")
    _check_marker_not_rendered(parsed, dynamic, "dynamic")
