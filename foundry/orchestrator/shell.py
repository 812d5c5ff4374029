"""Running shell commands for the model and for the test phase: in the working directory,
inside the build's sandbox (sandbox.py: confinement, allow-list environment, limits), with a
timeout, bounded output (head and tail kept), and nothing left running afterwards."""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from foundry.orchestrator.sandbox import Sandbox, unconfined

_SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PAT")
_SECRET_PARTS = ("PASSWORD", "PASSWD", "SECRET", "CREDENTIAL", "API_KEY", "ACCESS_KEY")
TICK_S = 0.5


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return (
        upper.startswith("ANTHROPIC_")
        or upper.endswith(_SECRET_SUFFIXES)
        or any(part in upper for part in _SECRET_PARTS)
    )


def scrubbed_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment minus API keys, tokens, secrets and passwords: for foundry's own
    commands (deploy's git). The model's commands get an allow-list instead (sandbox.py)."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not is_secret_name(k)}


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail of `text` within about `limit` characters."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n[... {dropped} characters omitted ...]\n{text[-half:]}"


class _BoundedSink:
    """Collects a stream keeping only the first and last `half` characters (bounded memory)."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head: list[str] = []
        self.head_len = 0
        self.tail: deque[str] = deque()
        self.tail_len = 0
        self.total = 0

    def add(self, chunk: str) -> None:
        self.total += len(chunk)
        if self.head_len < self.half:
            take = chunk[: self.half - self.head_len]
            self.head.append(take)
            self.head_len += len(take)
            chunk = chunk[len(take) :]
        if chunk:
            self.tail.append(chunk)
            self.tail_len += len(chunk)
            while self.tail_len - len(self.tail[0]) >= self.half:
                self.tail_len -= len(self.tail.popleft())

    def text(self) -> str:
        head = "".join(self.head)
        tail = "".join(self.tail)[-self.half :] if self.tail else ""
        dropped = self.total - len(head) - len(tail)
        if dropped <= 0:
            return head + tail
        return f"{head}\n[... {dropped} characters omitted ...]\n{tail}"


@dataclass
class CommandResult:
    command: str
    exit_code: int | None  # None: killed at the timeout
    output: str
    duration_s: float
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def describe(self) -> str:
        if self.timed_out:
            status = f"timed out after {self.duration_s:.0f}s (killed)"
        else:
            status = f"exit code {self.exit_code}"
        return f"$ {self.command}\n[{status}, {self.duration_s:.1f}s]\n{self.output}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _exit_notifier(pid: int) -> int | None:
    """A pidfd that becomes readable when the process exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait(proc: subprocess.Popen[bytes], exited: int | None, seconds: float) -> None:
    """Popen.wait(timeout) sleeps in doubling steps, so a 15 ms command was noticed at
    31 ms; a pidfd wakes us the moment the command exits."""
    if exited is None:
        proc.wait(timeout=seconds)
        return
    select.select([exited], [], [], seconds)
    if proc.poll() is None:
        raise subprocess.TimeoutExpired(proc.args, seconds)


def run_command(
    command: str,
    cwd: Path,
    *,
    timeout_s: float,
    output_limit: int,
    on_tick: Callable[[], None] | None = None,
    sandbox: Sandbox | None = None,
    network: bool = True,
) -> CommandResult:
    """Run `command` through the shell in `sandbox` (None: an unconfined one with the default
    settings, for this command only); `on_tick` is called about every TICK_S while it runs
    (the build uses it for cache keep-alives). Everything the command started is killed at
    the timeout, when the caller is interrupted, and when the command ends."""
    own = sandbox is None
    box = unconfined(cwd) if sandbox is None else sandbox
    try:
        return _run(command, cwd, box, timeout_s, output_limit, on_tick, network)
    finally:
        if own:
            box.close()


def _run(
    command: str,
    cwd: Path,
    sandbox: Sandbox,
    timeout_s: float,
    output_limit: int,
    on_tick: Callable[[], None] | None,
    network: bool,
) -> CommandResult:
    started = time.monotonic()
    sink = _BoundedSink(output_limit)
    launch = sandbox.launch(command, network=network)
    try:
        # A new session makes the command (or bwrap) and its children one group we can kill.
        proc = subprocess.Popen(
            launch.argv,
            cwd=cwd,
            env=launch.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=launch.preexec,
            pass_fds=launch.pass_fds,
        )
    except BaseException:
        launch.end()
        raise
    launch.started()

    stdout = proc.stdout
    assert isinstance(stdout, io.BufferedReader)  # a binary pipe: read1 returns what is there

    def pump() -> None:
        for raw in iter(lambda: stdout.read1(65536), b""):
            sink.add(raw.decode("utf-8", errors="replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    exited = _exit_notifier(proc.pid)
    timed_out = False
    try:
        while True:
            try:
                # Never past the deadline: the timeout is kept to the tick, not rounded up.
                left = timeout_s - (time.monotonic() - started)
                _wait(proc, exited, max(min(TICK_S, left), 0.01))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - started >= timeout_s:
                    timed_out = True
                    _kill_group(proc)
                    proc.wait()
                    break
                if on_tick is not None:
                    on_tick()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        # Children that outlive the shell (setsid ones too) would keep the pipe open.
        if proc.poll() is not None:
            _kill_group(proc)
        launch.end()
        if exited is not None:
            os.close(exited)
        reader.join(timeout=5)
        if not reader.is_alive():
            stdout.close()
    return CommandResult(
        command=command,
        exit_code=None if timed_out else proc.returncode,
        output=sink.text(),
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
    )
