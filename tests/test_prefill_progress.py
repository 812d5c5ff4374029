"""The first wait explains itself: a cold prefill reports its progress between chunks (tokens
done of total, elapsed), the build's display and `foundry cache warm` show it with the rate,
the time left and that the prefix is being saved once, and `foundry serve` logs its start and
end. Real mlx and llama.cpp on the tiny random-weight models."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from rich.console import Console

from foundry.backends.base import Message, ModelRequest, PrefillProgress, ToolSpec
from foundry.config import FoundryConfig
from tests.tiny_model import write_tiny_gguf

READ = ToolSpec("read_file", "Read a file.", {"type": "object", "properties": {"path": {}}})
# Long enough for several 512-token prefill chunks.
SYSTEM = "You are a careful build orchestrator. Read, write, test and report. " * 60


def config(tmp_path: Path) -> FoundryConfig:
    return FoundryConfig.model_validate({"prefix_cache": {"dir": str(tmp_path / "store")}})


def request(seen: list[PrefillProgress], text: str = "Build a todo app") -> ModelRequest:
    messages = [Message("user", [{"type": "text", "text": text}])]
    return ModelRequest(
        "tiny", SYSTEM, [READ], messages, max_tokens=4, temperature=0.0, on_prefill=seen.append
    )


def mlx_backend(tiny_model_dir, tmp_path):
    from foundry.backends.mlx import MLXBackend

    return MLXBackend(config(tmp_path), str(tiny_model_dir))


def llamacpp_backend(tiny_model_dir, tmp_path):
    from foundry.backends.llamacpp import LlamaCppBackend

    gguf = tmp_path / "tiny.gguf"
    if not gguf.exists():
        write_tiny_gguf(tiny_model_dir, gguf)
    return LlamaCppBackend(config(tmp_path), str(gguf))


ENGINES = [
    pytest.param(mlx_backend, marks=pytest.mark.mlx, id="mlx"),
    pytest.param(llamacpp_backend, marks=pytest.mark.llamacpp, id="llamacpp"),
]


@pytest.mark.parametrize("make", ENGINES)
def test_a_cold_prefill_reports_chunks_up_to_the_total_and_a_warm_hit_only_its_tail(
    make, tiny_model_dir, tmp_path
) -> None:
    seen: list[PrefillProgress] = []
    cold = make(tiny_model_dir, tmp_path).complete(request(seen))
    prompt = cold.usage.total_input_tokens
    assert cold.usage.cache_write_5m_tokens > 512  # the prefix spans several chunks
    done = [p.done for p in seen]
    assert done == sorted(set(done)), "done counts rise strictly"
    assert done[0] == 0 and done[-1] == prompt and len(done) >= 3
    assert {p.total for p in seen} == {prompt}
    assert all(p.saving for p in seen[:-1])  # the prefix is being saved while it is computed
    elapsed = [p.elapsed_s for p in seen]
    assert elapsed == sorted(elapsed)
    # A new build finds the prefix on disk: only what it prefills now is reported.
    seen.clear()
    warm = make(tiny_model_dir, tmp_path).complete(request(seen))
    assert warm.usage.cache_read_tokens == cold.usage.cache_write_5m_tokens
    assert seen, "the tail's prefill is reported too"
    assert {p.total for p in seen} == {warm.usage.input_tokens}
    assert seen[-1].done == warm.usage.input_tokens and not any(p.saving for p in seen)


@pytest.mark.mlx
def test_no_callback_costs_nothing_and_the_callback_costs_nothing_measurable(
    tiny_model_dir, tmp_path
) -> None:
    """The listener is called between 512-token chunks, never per token: a 2,000-token
    prefill hears a handful of calls, and decode none."""
    seen: list[PrefillProgress] = []
    b = mlx_backend(tiny_model_dir, tmp_path)
    b.complete(request(seen))
    prompt = seen[-1].total
    assert len(seen) <= prompt // 512 + 4
    reply = b.complete(request([]))  # no listener: nothing breaks
    assert reply.usage.output_tokens >= 1


# -- the build's display ------------------------------------------------------------------


def test_the_live_panel_says_what_the_wait_is_and_that_it_happens_once() -> None:
    from foundry.orchestrator.display import LiveDisplay

    out = io.StringIO()
    display = LiveDisplay(Console(file=out, force_terminal=True, width=200))
    try:
        display.request_started("plan", 1)
        display.prefill_progress(PrefillProgress(2048, 6170, 51.2, saving=True))
        assert display.state == (
            "prefilling 2,048 / 6,170 tokens, 40 tok/s, ~1m43s left — saving the prefix "
            "so later requests skip this"
        )
        rendered = Console(file=io.StringIO(), width=300, record=True)
        rendered.print(display._render())
        assert "prefilling 2,048 / 6,170 tokens" in rendered.export_text()
        display.text_delta("ok")
        assert display.state.startswith("model writing")
    finally:
        display.close()


def test_piped_progress_is_one_line_every_few_seconds() -> None:
    from foundry.orchestrator.display import PlainDisplay

    out = io.StringIO()
    display = PlainDisplay(Console(file=out, width=200))
    total = 6170
    steps = 600  # an event every 0.1 s for a minute: far more often than anyone reads
    for i in range(steps + 1):
        display.prefill_progress(PrefillProgress(total * i // steps, total, i * 0.1, saving=True))
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 60 / 5 + 2, lines
    assert "saving the prefix so later requests skip this" in lines[0]
    assert "6,170 / 6,170 tokens" in lines[-1]
    # A warm hit's short tail says nothing in a log.
    out.truncate(0)
    out.seek(0)
    display.prefill_progress(PrefillProgress(0, 27, 0.0, saving=False))
    display.prefill_progress(PrefillProgress(27, 27, 0.1, saving=False))
    assert out.getvalue() == ""


def test_the_build_passes_its_displays_listener_to_the_backend(tmp_path) -> None:
    from foundry.orchestrator.events import Events
    from tests.orchestrator_helpers import finish, run_build

    heard: list[PrefillProgress] = []

    class Display(Events):
        def prefill_progress(self, progress: PrefillProgress) -> None:
            heard.append(progress)

    def prefilling(request: ModelRequest):
        assert request.on_prefill is not None  # (the fake deep-copied the request first)
        request.on_prefill(PrefillProgress(0, 10, 0.0, saving=True))
        return [finish()], "tool_use"

    result, _, _ = run_build(tmp_path, [prefilling], phases=("scout",), events=Display())
    assert heard == [PrefillProgress(0, 10, 0.0, saving=True)]


# -- foundry cache warm and foundry serve -------------------------------------------------


@pytest.mark.mlx
def test_cache_warm_shows_the_prefill_on_stderr(cli, tmp_path) -> None:
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", max_position_embeddings=8192)
    template = tmp_path / "prompt.txt"
    static = "# Orchestrator\n\nRead the files, write the code, run the tests, report.\n" * 12
    template.write_text(f"{static}<<CACHE_BOUNDARY>>\nTask: {{{{ task }}}}\n", encoding="utf-8")
    args = ("cache", "warm", "--backend", "mlx", "--model", str(model))
    result = cli(*args, "--template", str(template), "--db", str(tmp_path / "l.db"))
    assert result.exit_code == 0, result.stderr
    assert "prefilling 0 / " in result.stderr
    assert "saving the prefix so later requests skip this" in result.stderr
    assert "prefix tokens written to the prefix store" in result.stdout


@pytest.mark.mlx
def test_serve_logs_the_cold_prefill_start_and_end(tiny_model_dir, tmp_path) -> None:
    pytest.importorskip("uvicorn")
    from tests.serve_helpers import serving, system_blocks

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("foundry.server.service")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with serving(tiny_model_dir, tmp_path) as served:
            client = served.client()
            for text in ("Build a todo app", "Build a wiki"):
                client.messages.create(
                    model="claude-sonnet-4-6",
                    max_tokens=4,
                    system=system_blocks(),
                    messages=[{"role": "user", "content": text}],
                )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    started = [r for r in records if r.startswith("cold prefill:")]
    ended = [r for r in records if r.startswith("cold prefill done:")]
    assert len(started) == 1 and len(ended) == 1, records  # the second request is a hit
    assert "saving" in started[0] and "once" in started[0]
    assert "tokens in" in ended[0] and "saved" in ended[0]


def test_the_plain_display_text_without_a_rate_yet() -> None:
    from foundry.orchestrator.display import describe

    assert describe(PrefillProgress(0, 6170, 0.0, saving=True)) == (
        "prefilling 0 / 6,170 tokens — saving the prefix so later requests skip this"
    )
    assert describe(PrefillProgress(512, 600, 2.0, saving=False)) == (
        "prefilling 512 / 600 tokens, 256 tok/s, ~0s left"
    )
