"""Loading and rendering the orchestrator prompt template: where it comes from, the Jinja
sandbox it renders in, includes, and one-line errors with file and line.

foundry.prompt.split builds the boundary split on top of this; import from there.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound, nodes
from jinja2.loaders import split_template_path
from jinja2.sandbox import SandboxedEnvironment

from foundry.config import TEMPLATE_FILENAME
from foundry.errors import TemplateError

PHASES: tuple[str, ...] = ("scout", "architect", "builder", "test", "deploy")
Mode = Literal["new", "existing"]

# The names a template may use (below the marker). Documented in docs/prompt-and-analysis.md.
TEMPLATE_VARIABLES: tuple[str, ...] = (
    "build_name",
    "task",
    "workdir",
    "mode",
    "phases",
    "max_test_iterations",
)


@dataclass(frozen=True)
class TaskConfig:
    """What one build renders into the dynamic part."""

    name: str
    task: str
    workdir: str
    mode: Mode = "new"
    phases: tuple[str, ...] = PHASES
    max_test_iterations: int = 3

    def context(self) -> dict[str, Any]:
        return {
            "build_name": self.name,
            "task": self.task,
            "workdir": self.workdir,
            "mode": self.mode,
            "phases": list(self.phases),
            "max_test_iterations": self.max_test_iterations,
        }


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class TemplateSource:
    """A template's text and where its includes resolve."""

    name: str  # shown in messages: a path, or "<packaged orchestrator_prompt.txt>"
    text: str
    # Directories searched for includes ("prompts/scout.md"), in order.
    include_roots: tuple[tuple[str, Traversable], ...] = field(default=(), repr=False)


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8-sig")  # a BOM would otherwise become part of the prompt
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TemplateError(
            f"{name}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            "save the file as UTF-8",
        ) from None
    return _normalise_newlines(text)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read(node: Traversable | Path, name: str) -> str:
    try:
        data = node.read_bytes()
    except FileNotFoundError:
        raise TemplateError(f"template not found: {name}", "check the --template path") from None
    except IsADirectoryError:
        raise TemplateError(f"{name} is a directory, not a template file") from None
    except OSError as exc:
        raise TemplateError(
            f"cannot read {name}: {exc.strerror}", "check its permissions"
        ) from None
    return _decode(data, name)


def _packaged_root() -> Traversable:
    return resources.files("foundry.data")


def load_template(path: Path | str | None = None) -> TemplateSource:
    """--template PATH, else ./orchestrator_prompt.txt, else the packaged template.

    Includes resolve next to the template first, then in the packaged data, so a user can
    copy only orchestrator_prompt.txt and still include the packaged prompts/*.md.
    """
    packaged = ("packaged", _packaged_root())
    candidate = Path(path) if path is not None else Path.cwd() / TEMPLATE_FILENAME
    if path is None and not candidate.is_file():
        name = f"<packaged {TEMPLATE_FILENAME}>"
        return TemplateSource(
            name, _read(packaged[1].joinpath(TEMPLATE_FILENAME), name), (packaged,)
        )
    text = _read(candidate, str(candidate))
    here = candidate.resolve().parent
    return TemplateSource(str(candidate), text, ((str(here), here), packaged))


def template_from_text(
    text: str, name: str = "<template>", base: Path | None = None
) -> TemplateSource:
    """A template given as text; includes resolve under `base`, then in the packaged data."""
    roots: tuple[tuple[str, Traversable], ...] = ((str(base), base),) if base else ()
    return TemplateSource(
        name, _normalise_newlines(text), roots + (("packaged", _packaged_root()),)
    )


class _IncludeLoader(BaseLoader):
    """Serves {% include %} targets from the include roots; never leaves them (no '..')."""

    def __init__(self, roots: tuple[tuple[str, Traversable], ...]) -> None:
        self.roots = roots
        self.served: dict[str, str] = {}  # display name -> source, for locating text later
        self.by_name: dict[str, str] = {}  # include name -> source, for the template's identity

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool] | None]:
        pieces = split_template_path(template)  # raises TemplateNotFound for '..'
        for label, root in self.roots:
            node = root.joinpath(*pieces)
            if node.is_file():
                shown = (
                    f"<packaged {'/'.join(pieces)}>"
                    if label == "packaged"
                    else str(Path(label, *pieces))
                )
                source = _read(node, shown)
                self.served[shown] = source
                self.by_name["/".join(pieces)] = source
                return source, shown, lambda: True
        raise TemplateNotFound(template)


def environment(template: TemplateSource) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=_IncludeLoader(template.include_roots),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,  # an included file ends with its own newline
        autoescape=False,
    )
    # lipsum() is random: a static part using it would differ on every render.
    env.globals.pop("lipsum", None)
    return env


# --------------------------------------------------------------------------- errors


def _location(exc: BaseException, known: set[str], default: str) -> str:
    """'file:line' of the innermost template frame of `exc` (Jinja rewrites tracebacks so
    template code appears with its own file name and line)."""
    lineno = getattr(exc, "lineno", None)
    filename = getattr(exc, "filename", None) or getattr(exc, "name", None)
    if isinstance(exc, jinja2.TemplateSyntaxError) and lineno:
        return f"{filename or default}:{lineno}"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in known:
            return f"{frame.filename}:{frame.lineno}"
    return default


def template_error(exc: Exception, known: set[str], default: str) -> TemplateError:
    where = _location(exc, known, default)
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateError(f"{where}: template syntax error: {exc.message}", "fix the template")
    if isinstance(exc, jinja2.UndefinedError):
        names = ", ".join(TEMPLATE_VARIABLES)
        return TemplateError(
            f"{where}: undefined variable: {exc.message}",
            f"a template can use only: {names} (and names it sets itself)",
        )
    if isinstance(exc, TemplateNotFound) and ".." in str(exc.name).replace("\\", "/").split("/"):
        return TemplateError(
            f"{where}: include '{exc.name}' refused: includes may not leave the template's "
            "directory",
            "keep included files next to the template (e.g. prompts/*.md)",
        )
    if isinstance(exc, TemplateNotFound):
        return TemplateError(
            f"{where}: included file '{exc.name}' not found (looked next to the template "
            "and in the packaged prompts)",
            "check the include path",
        )
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return TemplateError(f"{where}: not allowed in a template: {exc}", "remove that expression")
    return TemplateError(
        f"{where}: rendering failed: {type(exc).__name__}: {exc}", "fix the template"
    )


# --------------------------------------------------------------------------- parsing


Part = Literal["static", "dynamic"]


@dataclass(frozen=True)
class VariableUse:
    """A render variable used by the template, and where."""

    name: str
    file: str
    line: int
    template_line: int  # the line in the main template (the include statement for an include)
    part: Part


@dataclass
class ParsedTemplate:
    source: TemplateSource
    marker: str
    marker_line: int  # 1-based line of the marker in the template
    static_source: str
    dynamic_source: str  # padded with newlines so its line numbers match the file
    env: SandboxedEnvironment = field(repr=False)
    _compiled: dict[str, jinja2.Template] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def _loader(self) -> _IncludeLoader:
        loader = self.env.loader
        assert isinstance(loader, _IncludeLoader)  # environment() always installs it
        return loader

    def _known_files(self) -> set[str]:
        loader = self.env.loader
        assert isinstance(loader, _IncludeLoader)
        return {self.name, *loader.served}

    def _compile(self, text: str) -> jinja2.Template:
        if text in self._compiled:
            return self._compiled[text]
        try:
            code = self.env.compile(text, name=self.name, filename=self.name)
        except jinja2.TemplateSyntaxError as exc:
            raise template_error(exc, self._known_files(), self.name) from None
        template = self.env.template_class.from_code(
            self.env, code, self.env.make_globals(None), None
        )
        self._compiled[text] = template
        return template

    def _render(self, text: str, task: TaskConfig) -> str:
        template = self._compile(text)
        try:
            rendered = template.render(task.context())
        except TemplateError:  # from the include loader: already says where
            raise
        except Exception as exc:  # any failure inside user template code becomes one line
            raise template_error(exc, self._known_files(), self.name) from None
        return rendered.lstrip("\n").rstrip()

    def render_static(self, task: TaskConfig) -> str:
        return self._render(self.static_source, task)

    def render_dynamic(self, task: TaskConfig) -> str:
        return self._render(self.dynamic_source, task)

    def variable_uses(self) -> list[VariableUse]:
        """Every use of a render variable, in the template and the files it includes."""
        uses: list[VariableUse] = []
        parts: tuple[tuple[Part, str], ...] = (
            ("static", self.static_source),
            ("dynamic", self.dynamic_source),
        )
        for part, text in parts:
            for name, file, line, top in self._walk(text, self.name, None, set()):
                uses.append(VariableUse(name, file, line, top, part))
        return sorted(uses, key=lambda u: (u.template_line, u.file, u.line, u.name))

    def _walk(
        self, text: str, file: str, top_line: int | None, seen: set[str]
    ) -> Iterator[tuple[str, str, int, int]]:
        try:
            ast = self.env.parse(text, name=file, filename=file)
        except jinja2.TemplateSyntaxError:
            return  # reported by rendering, with its location
        for node in ast.find_all(nodes.Name):
            if node.ctx == "load" and node.name in TEMPLATE_VARIABLES:
                yield node.name, file, node.lineno, top_line or node.lineno
        for include in ast.find_all(nodes.Include):
            target = include.template
            if not isinstance(target, nodes.Const) or not isinstance(target.value, str):
                continue
            try:
                source, shown, _ = self._loader.get_source(self.env, target.value)
            except (TemplateNotFound, TemplateError):
                continue
            if shown in seen:
                continue
            yield from self._walk(source, shown, top_line or include.lineno, seen | {shown})

    def template_sha256(self) -> str:
        """SHA-256 of the template text and every file it included (by include name, so
        the same template in another directory hashes the same)."""
        loader = self._loader
        self.variable_uses()  # loads every literal include, even those a branch skipped
        digest = hashlib.sha256(self.source.text.encode("utf-8"))
        for name in sorted(loader.by_name):
            digest.update(f"\0{name}\0{loader.by_name[name]}".encode())
        return digest.hexdigest()

    def locate(self, snippet: str) -> str | None:
        """'file:line' where `snippet` is written literally in the template or an include."""
        files = {self.name: self.source.text, **self._loader.served}
        for file, text in files.items():
            for number, line in enumerate(text.split("\n"), start=1):
                if snippet in line:
                    return f"{file}:{number}"
        return None
