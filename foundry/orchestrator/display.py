"""The build's progress on stderr: a rich Live panel on a terminal, plain lines otherwise,
and the final per-phase table. Results never go here; they go to stdout."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from foundry.config import is_default_endpoint
from foundry.console import Unclipped, one_line
from foundry.formatting import money, percent
from foundry.orchestrator.events import Events

if TYPE_CHECKING:
    from foundry.backends.base import PrefillCallback, PrefillProgress
    from foundry.orchestrator.metered import ModelSession, PhaseStats
    from foundry.orchestrator.shell import CommandResult
    from foundry.usage import Usage


SAVING_NOTE = "saving the prefix so later requests skip this"


def duration(seconds: float) -> str:
    """ "45s", "1m40s", "2h05m": short enough for a status line."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe(progress: PrefillProgress) -> str:
    """ "prefilling 2,048 / 6,170 tokens, 40 tok/s, ~1m43s left — saving the prefix so later
    requests skip this". The rate and time left appear once a chunk has been measured."""
    text = f"prefilling {progress.done:,} / {progress.total:,} tokens"
    if progress.done > 0 and progress.elapsed_s > 0:
        rate = progress.done / progress.elapsed_s
        left = (progress.total - progress.done) / rate
        # Later chunks attend to more tokens and run slower: the time left is an estimate.
        text += f", {rate:,.0f} tok/s, ~{duration(left)} left"
    if progress.saving:
        text += f" — {SAVING_NOTE}"
    return text


class PrefillLines:
    """Prefill progress as plain lines (a log, a pipe): at most one every `every_s` seconds
    of the prefill, so a long one reads as a handful of lines, never a flood. A prefill that
    saves a prefix says so at once (it is the long, once-only wait); a short one that ends
    before `every_s` (a warm request's own tokens) says nothing."""

    def __init__(self, write: PrefillCallback, every_s: float = 5.0) -> None:
        self.write = write
        self.every_s = every_s
        self._last: float | None = None  # elapsed_s of the last line written

    def __call__(self, progress: PrefillProgress) -> None:
        if progress.done == 0:  # a new prefill
            self._last = None
        finished = progress.done >= progress.total
        if self._last is None:
            due = (progress.saving and progress.done == 0) or progress.elapsed_s >= self.every_s
        else:
            due = finished or progress.elapsed_s - self._last >= self.every_s
        if due:
            self._last = progress.elapsed_s
            self.write(progress)


class PlainDisplay(Events):
    """One line per event: for logs, CI and any stderr that is not a terminal."""

    def __init__(
        self, console: Console, max_cost: float | None = None, endpoint: str | None = None
    ) -> None:
        self.console = console
        self.max_cost = max_cost
        # Shown whenever the requests (and the API key) go elsewhere than the API's own host.
        self.endpoint = None if is_default_endpoint(endpoint) else endpoint
        if self.endpoint and type(self) is PlainDisplay:
            self._line(f"endpoint: model requests and the API key go to {self.endpoint}")
        self._prefill_lines = PrefillLines(lambda p: self._line(describe(p), "dim"))

    def _line(self, text: str, style: str | None = None) -> None:
        self.console.print(Text(text, style=style or ""), highlight=False)

    def phase_started(self, phase: str) -> None:
        self._line(f"== phase {phase}", "bold")

    def phase_finished(self, phase: str, status: str) -> None:
        self._line(f"== phase {phase}: {status}")

    def request_done(self, phase: str, turn: int | None, usage: Usage, session: Any) -> None:
        total, spent = session.total, session.spent
        left = ""
        if self.max_cost is not None and spent is not None:
            left = f", budget left {money(self.max_cost - spent)}"
        self._line(
            f"[{phase}] turn {turn if turn is not None else '-'}: in {usage.input_tokens:,}, "
            f"out {usage.output_tokens:,}, cache read {usage.cache_read_tokens:,}, "
            f"cache write {usage.cache_write_tokens:,}; build so far {money(spent)}, "
            f"hit rate {percent(total.usage.hit_rate)}{left}"
        )

    def prefill_progress(self, progress: PrefillProgress) -> None:
        """A local model's prefill (between its chunks): a line every few seconds at most."""
        self._prefill_lines(progress)

    def tool_called(self, phase: str, name: str, detail: str, is_error: bool) -> None:
        line = f"[{phase}]   {name} {detail}".rstrip()
        self._line(line + ("  (error)" if is_error else ""), "dim")

    def test_run(self, iteration: int, result: CommandResult) -> None:
        verdict = "passed" if result.passed else "FAILED"
        self._line(f"[test] run {iteration}: {verdict} ({result.duration_s:.1f}s)")

    def note(self, message: str) -> None:
        self._line(message, "dim")

    def warning(self, message: str) -> None:
        self.console.print(Text.assemble(("warning: ", "bold yellow"), one_line(message)))


class LiveDisplay(PlainDisplay):
    """A panel that redraws in place: phase, turn, last tool, tokens, hit rate, spend."""

    def __init__(
        self, console: Console, max_cost: float | None = None, endpoint: str | None = None
    ) -> None:
        super().__init__(console, max_cost, endpoint)
        self.session: ModelSession | None = None
        self.phase = "-"
        self.turn: int | None = None
        self.state = "starting"
        self.streamed = 0
        self.started = time.monotonic()
        self.live = Live(console=console, get_renderable=self._render, refresh_per_second=4)
        self.live.start()

    def attach(self, session: ModelSession) -> None:
        self.session = session

    def _render(self) -> Table:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan")
        grid.add_column()
        total = self.session.total if self.session else None
        stats = self.session.phases.get(self.phase) if self.session else None
        if self.endpoint:
            grid.add_row("endpoint", Text(self.endpoint, style="bold yellow"))
        grid.add_row("phase", f"{self.phase}  turn {self.turn or '-'}  ({self.state})")
        grid.add_row("last tool", (stats.last_tool if stats else None) or "-")
        if total is not None:
            usage = total.usage
            grid.add_row(
                "tokens",
                f"in {usage.input_tokens:,} · out {usage.output_tokens:,} · cache read "
                f"{usage.cache_read_tokens:,} · cache write {usage.cache_write_tokens:,}",
            )
            grid.add_row("cache hit rate", percent(usage.hit_rate))
            spent = self.session.spent if self.session else None
            spend = money(spent)
            if self.max_cost is not None and spent is not None:
                spend += f"  (budget left {money(self.max_cost - spent)})"
            grid.add_row("cost so far", spend)
        grid.add_row("elapsed", f"{time.monotonic() - self.started:.0f}s")
        return grid

    def phase_started(self, phase: str) -> None:
        self.phase, self.turn, self.state = phase, None, "running"
        super().phase_started(phase)

    def request_started(self, phase: str, turn: int) -> None:
        self.turn, self.state, self.streamed = turn, "waiting for the model", 0

    def prefill_progress(self, progress: PrefillProgress) -> None:
        # Redrawn in place 4 times a second, so every chunk may update it.
        self.state = describe(progress)

    def text_delta(self, text: str) -> None:
        self.streamed += len(text)
        self.state = f"model writing ({self.streamed:,} chars)"

    def request_done(self, phase: str, turn: int | None, usage: Usage, session: Any) -> None:
        self.state = "running tools"

    def tool_called(self, phase: str, name: str, detail: str, is_error: bool) -> None:
        self.state = f"{name} {detail}"[:80]

    def close(self) -> None:
        self.live.stop()


def make_display(
    console: Console, max_cost: float | None, *, endpoint: str | None = None
) -> Events:
    if console.is_terminal:
        return LiveDisplay(console, max_cost, endpoint)
    return PlainDisplay(console, max_cost, endpoint)


def phase_table(phases: dict[str, PhaseStats], total: PhaseStats) -> Unclipped:
    """Per phase: status, turns, requests, tokens by kind, cache hit rate and cost. In a
    log (stderr not a terminal) it keeps its natural width: its cells do not wrap, so at
    rich's guess of 80 columns they would be cut to "12,34…"."""
    table = Table(
        title="build by phase (tokens: in = uncached input, read/write = cache)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    headers = ("phase", "status", "turns", "reqs", "in", "out", "read", "write", "hit", "cost")
    for header in headers:
        left = header in ("phase", "status")
        table.add_column(header, justify="left" if left else "right", no_wrap=True)
    turns = sum(stats.turns for stats in phases.values())
    rows = [(name, stats, stats.turns) for name, stats in phases.items()]
    for name, stats, turn_count in [*rows, ("total", total, turns)]:
        table.add_row(
            name,
            stats.status if name != "total" else "",
            str(turn_count),
            str(stats.requests),
            f"{stats.usage.input_tokens:,}",
            f"{stats.usage.output_tokens:,}",
            f"{stats.usage.cache_read_tokens:,}",
            f"{stats.usage.cache_write_tokens:,}",
            percent(stats.usage.hit_rate),
            money(stats.cost_usd),
            style="bold" if name == "total" else None,
        )
    return Unclipped(table)


def summary_lines(summary: dict[str, Any], *, local: bool) -> list[str]:
    """The build's results for stdout, a few lines (rich markup). `local`: the backend ran
    on this machine, so its saving is prefill time, not money."""
    tokens = summary["tokens"]
    created = summary["files_created"]
    more = " ..." if len(created) > 8 else ""
    lines = [
        f"build {summary['name']}: [bold]{summary['status']}[/]",
        f"  directory      {summary['workdir']}",
        f"  phases         {', '.join(summary['phases_completed']) or 'none'} completed",
        f"  files created  {len(created)}"
        + (f": {', '.join(created[:8])}{more}" if created else ""),
    ]
    if summary["test_command"]:
        verdict = {True: "passed", False: "failed", None: "not run"}[summary["tests_passed"]]
        lines.append(
            f"  tests          {verdict} after {summary['test_iterations']} run(s): "
            f"{summary['test_command']}"
        )
    if summary["commit"]:
        lines.append(f"  commit         {summary['commit']}")
    lines += [
        f"  requests       {summary['requests']}; tokens in {tokens['input']:,}, out "
        f"{tokens['output']:,}, cache read {tokens['cache_read']:,}, cache write "
        f"{tokens['cache_write_5m'] + tokens['cache_write_1h']:,}; hit rate "
        f"{percent(summary['cache_hit_rate'])}",
        _cost_line(summary, local),
        f"  summary        {summary['workdir']}/.foundry/summary.json",
    ]
    return lines


def _cost_line(summary: dict[str, Any], local: bool) -> str:
    """Money for API backends; for a local model the saving is prefill time, not dollars."""
    if local:
        saved = summary.get("prefill_saved_s")
        reuse = f"; cache reuse saved ~{saved:,.1f} s of prefill" if saved else ""
        return f"  cost           $0 (local model){reuse}"
    cost, saved = money(summary["cost_usd"]), money(summary["saved_usd"])
    return f"  cost           {cost} (saved {saved} by caching)"
