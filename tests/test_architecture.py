"""The architecture docs/development.md draws (*Where a change goes*), checked: no import
cycles, each heavy library imported only by the package that owns it, and a top level that
keeps only what every subsystem shares."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "foundry"
# Who may import what: a library outside its owners' packages would load it for everyone.
OWNERS: dict[str, tuple[str, ...]] = {
    "mlx": ("local",),
    "mlx_lm": ("local",),
    "llguidance": ("local",),
    "llama_cpp": ("local",),
    "anthropic": ("backends/anthropic",),
    "openai": ("backends/openai",),
    # Two web servers of their own: serve's Messages API and the dashboard's page.
    "starlette": ("server", "dashboard"),
    "uvicorn": ("server", "dashboard"),
    "prometheus_client": ("server",),
    "mcp": ("mcp",),
    "opentelemetry": ("telemetry",),
}
# config, console, errors, formatting, fsutil, logs, pricing, timestamps, usage, cli.
SHARED_TOP_LEVEL_LIMIT = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Imports(ast.NodeVisitor):
    """Every module a file imports when it runs, lazily or not (typing-only imports are
    left out: they never execute)."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            self.found.add(node.module)
            self.found.update(f"{node.module}.{alias.name}" for alias in node.names)


def imports_of(path: Path) -> set[str]:
    visitor = _Imports()
    visitor.visit(ast.parse(path.read_text("utf-8")))
    return visitor.found


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(path): path for path in SOURCES}


def test_no_import_cycles() -> None:
    graph = {
        name: {m for m in imports_of(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    cycles: set[tuple[str, ...]] = set()

    def walk(node: str, stack: list[str]) -> None:
        for target in graph[node]:
            if target in stack:
                cycle = stack[stack.index(target) :]
                start = cycle.index(min(cycle))
                cycles.add(tuple(cycle[start:] + cycle[:start]))
            elif target not in done:
                walk(target, [*stack, target])
        done.add(node)

    done: set[str] = set()
    for name in graph:
        if name not in done:
            walk(name, [name])
    assert sorted(cycles) == []


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_a_heavy_library_is_imported_only_by_its_owner(library: str) -> None:
    owners = [PACKAGE / owner for owner in OWNERS[library]]
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in SOURCES
        if not any(owner in path.parents for owner in owners)
        and any(m == library or m.startswith(f"{library}.") for m in imports_of(path))
    ]
    assert offenders == []


def test_the_top_level_keeps_only_what_every_subsystem_shares() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= SHARED_TOP_LEVEL_LIMIT, top
