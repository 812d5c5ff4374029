"""The sandbox for the model's commands, tried as an attacker would: through the real build
loop with a scripted model, and command by command. It runs the real bubblewrap: on Linux
these tests fail (they never skip) when bwrap is missing, unless FOUNDRY_TEST_NO_BWRAP=1."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry.config import BuildConfig, FoundryConfig, SandboxLimits, foundry_home, parse_config
from foundry.errors import ConfigError
from foundry.orchestrator import containment, sandbox_env, sandbox_paths
from foundry.orchestrator import sandbox as sandbox_module
from foundry.orchestrator.containment import Containment, PidsCgroup
from foundry.orchestrator.events import Events
from foundry.orchestrator.sandbox import Sandbox, SandboxUnavailable, availability, foundry_paths
from foundry.orchestrator.shell import CommandResult, run_command
from tests.orchestrator_helpers import finish, ledger_rows, run_build, tool

PY = shlex.quote(sys.executable)
OPTED_OUT = os.environ.get("FOUNDRY_TEST_NO_BWRAP") == "1"
# The secrets foundry 0.1 leaked, by the names that slipped past its deny-list.
SECRET_NAMES = (
    "ANTHROPIC_API_KEY",
    "GITHUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "DATABASE_URL",
    "DB_PASS",
    "MYSQL_PWD",
    "MY_APIKEY",
    "TOKEN",
    "CI_JOB_JWT",
    "NPM_AUTH",
    "DOCKER_AUTH_CONFIG",
    "SENTRY_DSN",
    "SLACK_WEBHOOK_URL",
    "PRIVATE_KEY_PEM",
)


def test_bubblewrap_is_here_on_linux() -> None:
    """CI installs bubblewrap (.ci/run); a Linux machine without it fails here, loudly."""
    if sys.platform != "linux" or OPTED_OUT:
        pytest.skip("the sandbox is Linux-only; FOUNDRY_TEST_NO_BWRAP=1 opts out")
    found = availability()
    assert found.ok, f"{found.reason}: install bubblewrap, or set FOUNDRY_TEST_NO_BWRAP=1"


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp (the sandbox's /tmp is private, so it hides all of /tmp
    anyway): what is hidden there is hidden by the sandbox's own rules."""
    base = Path("/var/tmp") if os.access("/var/tmp", os.W_OK) else Path.home()
    path = Path(tempfile.mkdtemp(prefix="foundry-test-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def secrets(outside_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Secret variables, a home full of secret files and FOUNDRY_HOME, outside /tmp, each
    secret with a value to search for."""
    values = {name: f"leak-{name.lower()}-{os.urandom(4).hex()}" for name in SECRET_NAMES}
    values["DATABASE_URL"] = f"postgres://app:pw-{os.urandom(4).hex()}@db/app"
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    home = outside_tmp / "user-home"
    (outside_tmp / "foundry-home").mkdir()
    monkeypatch.setenv("FOUNDRY_HOME", str(outside_tmp / "foundry-home"))
    files = {
        ".ssh/id_rsa": "ssh-key",
        ".aws/credentials": "aws-file",
        ".config/gh/hosts.yml": "gh-token",
        ".netrc": "netrc-password",
        ".git-credentials": "git-credential",
    }
    for relative, label in files.items():
        path = home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        values[f"file:{relative}"] = f"{label}-{os.urandom(4).hex()}"
        path.write_text(values[f"file:{relative}"])
    monkeypatch.setenv("HOME", str(home))
    values["file:foundry.db"] = f"ledger-{os.urandom(4).hex()}"
    (outside_tmp / "foundry-home" / "foundry.db").write_text(values["file:foundry.db"])
    return values


def _box(tmp_path: Path, **settings: object) -> Sandbox:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return Sandbox(workdir, BuildConfig(**settings), hidden=foundry_paths())  # type: ignore[arg-type]


def _run(
    box: Sandbox, command: str, *, network: bool = False, timeout: float = 20
) -> CommandResult:
    return run_command(
        command, box.workdir, timeout_s=timeout, output_limit=20_000, sandbox=box, network=network
    )


def _alive(marker: str) -> list[str]:
    """Command lines of running processes that contain `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


def _cgroup_available() -> bool:
    probe = PidsCgroup.create(8)
    if probe is None:
        return False
    probe.remove()
    return True


def _process_limit_enforced() -> bool:
    """Root is exempt from RLIMIT_NPROC: only a pids cgroup limits its processes."""
    return os.getuid() != 0 or _cgroup_available()


# -- the real build loop, attacked ----------------------------------------------------------

_DRIVER = """
import dataclasses, json, sys
from pathlib import Path
from foundry.config import FoundryConfig
from tests.orchestrator_helpers import run_build
spec = json.loads(Path(sys.argv[1]).read_text())
config = FoundryConfig.model_validate({"build": spec["build"]})
result, backend, _ = run_build(
    Path(spec["tmp"]), spec["steps"], phases=tuple(spec["phases"]), config=config
)
seen = json.dumps([dataclasses.asdict(r) for r in backend.requests], default=str)
print(json.dumps({"status": result.status, "error": result.error, "seen": seen}))
"""


def _build_in_a_process(
    tmp_path: Path, steps: list, phases: list[str], build: dict
) -> tuple[str, str]:
    """run_build in a fresh Python whose environment at start is this one (secrets too):
    (the build's status, everything the model was sent)."""
    import subprocess

    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"tmp": str(tmp_path), "steps": steps, "phases": phases, "build": build})
    )
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(spec)],
        cwd=Path(__file__).resolve().parent.parent,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["status"], out["seen"] if out["status"] == "completed" else out["error"]


def test_a_scripted_attacker_gets_nothing_out_and_leaves_nothing_running(
    tmp_path: Path, bwrap: None, secrets: dict[str, str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    host_tmp = Path("/tmp") / f"foundry-attack-{os.urandom(4).hex()}"
    home = os.environ["HOME"]
    attacks = [
        "tr '\\0' '\\n' </proc/$PPID/environ; for f in /proc/[0-9]*/environ; do "
        "tr '\\0' '\\n' <$f; done; env",
        f"cat {home}/.ssh/id_rsa {home}/.aws/credentials {home}/.config/gh/hosts.yml "
        f"{home}/.netrc {home}/.git-credentials ~/.ssh/id_rsa; ls -a {home}/.config",
        f"echo pwn > {outside}/abs.txt; echo pwn > ../outside/rel.txt; "
        f"ln -s {outside} link; echo pwn > link/via-link.txt; echo pwn > {host_tmp}; "
        f"touch {foundry_home()}/pwn; echo pwn > .foundry/forged.md; echo pwn > /etc/pwn; "
        f"cat {foundry_home()}/foundry.db",
        # A bounded flood: more processes than the limit allows, each waiting to be counted.
        "for i in $(seq 60); do sleep 6101 & done; echo flooded",
        "setsid sleep 6102 & (sleep 6103 &); nohup sleep 6104 >/dev/null 2>&1 & echo detached",
        "sleep 6105",  # never ends on its own
    ]
    test_attack = (
        f"tr '\\0' '\\n' </proc/1/environ; env; echo pwn > {outside}/from-test.txt; "
        "setsid sleep 6106 & exit 0"
    )
    steps = [
        ([finish("design", "# Arch\n", test_command=test_attack)], "tool_use"),
        (
            [tool("run_command", command=command) for command in attacks]
            + [
                tool("read_file", path=f"{home}/.ssh/id_rsa"),
                tool("read_file", path="link/abs.txt"),
                tool("write_file", path="link/tool.txt", content="pwn"),
                tool("write_file", path="../outside/tool.txt", content="pwn"),
                tool("write_file", path=f"{outside}/tool.txt", content="pwn"),
            ],
            "tool_use",
        ),
        ([finish("built", "# Build log\n")], "tool_use"),
    ]
    build = {"command_timeout_s": 2, "limits": {"processes": 40}}
    # foundry runs in a process of its own whose starting environment holds the secrets, as
    # when a user starts it: that is what /proc/PID/environ shows.
    status, seen = _build_in_a_process(tmp_path, steps, ["architect", "builder", "test"], build)
    assert status == "completed", seen
    workdir = tmp_path / "hello"
    on_disk = b"".join(p.read_bytes() for p in workdir.rglob("*") if p.is_file())
    on_disk += b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    for name, value in secrets.items():
        assert value not in seen, f"{name} reached the model"
        assert value.encode() not in on_disk, f"{name} was written where the model can read it"
    # Each attack was refused or contained, and the model was told so.
    assert "Read-only file system" in seen and "Cannot fork" in seen
    assert "timed out after 2s" in seen and "detached" in seen
    assert "leads outside the working directory" in seen and "is absolute" in seen
    assert "contains '..'" in seen
    assert list(outside.iterdir()) == [] and not host_tmp.exists()
    assert not (foundry_home() / "pwn").exists() and not (workdir / ".foundry/forged.md").exists()
    assert "HOME=" in seen and f"HOME={home}" not in seen
    assert _alive("sleep 610") == []


def test_the_start_of_a_build_says_in_one_line_when_commands_run_unconfined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secrets: dict[str, str]
) -> None:
    monkeypatch.setattr(sandbox_module, "TOOL", "foundry-no-such-bwrap")
    warnings: list[str] = []

    class Recorder(Events):
        def warning(self, message: str) -> None:
            warnings.append(message)

    steps = [
        ([tool("run_command", command="env; setsid sleep 6107 & echo ran")], "tool_use"),
        ([finish("built", "# Build log\n")], "tool_use"),
    ]
    result, backend, _ = run_build(tmp_path, steps, phases=("builder",), events=Recorder())
    assert result.status == "completed", result.error
    assert warnings[0].startswith("no command sandbox: foundry-no-such-bwrap is not installed;")
    assert 'build.sandbox to "require"' in warnings[0] and "\n" not in warnings[0]
    seen = json.dumps([dataclasses.asdict(r) for r in backend.requests], default=str)
    assert "ran" in seen  # today's mode: unconfined, but still allow-listed and contained
    for name in SECRET_NAMES:
        assert secrets[name] not in seen
    assert _alive("sleep 6107") == []


def test_require_refuses_to_build_without_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.setattr(sandbox_module, "TOOL", "foundry-no-such-bwrap")
    config = FoundryConfig(build=BuildConfig(sandbox="require"))
    with pytest.raises(SandboxUnavailable, match="foundry-no-such-bwrap is not installed"):
        run_build(tmp_path, [], phases=("builder",), config=config)
    assert ledger_rows(tmp_path / "ledger.db", "builds") == []  # refused before the ledger
    Path("cache_config.json").write_text(json.dumps({"build": {"sandbox": "require"}}))
    result = cli("build", "hello", "task", "--backend", "anthropic", "--yes")
    assert result.exit_code == 1 and not Path("hello").exists()
    assert result.stderr.count("\n") == 1
    assert 'build.sandbox is "require" but foundry-no-such-bwrap is not installed' in (
        result.stderr
    )
    assert "install bubblewrap" in result.stderr


# -- command by command ---------------------------------------------------------------------


def test_the_file_system_is_read_only_but_for_the_working_directory(
    tmp_path: Path, bwrap: None, secrets: dict[str, str]
) -> None:
    box = _box(tmp_path)
    (box.workdir / ".git").mkdir()
    (box.workdir / ".foundry").mkdir()
    host_file = Path("/tmp") / f"foundry-host-{os.urandom(4).hex()}"
    host_file.write_text("host tmp")
    home = os.environ["HOME"]
    try:
        out = _run(
            box,
            "echo ok > made.txt && cat made.txt; touch /usr/pwn; mkdir .git/hooks; "
            f"touch .foundry/x; cat {host_file}; cat {home}/.ssh/id_rsa; ls -A {home}/.config; "
            f"ls -A {foundry_home()}; grep CapEff /proc/self/status; hostname; "
            "echo procs=$(ls /proc | grep -c '^[0-9]')",
        ).output
    finally:
        host_file.unlink()
        box.close()
    assert (box.workdir / "made.txt").read_text() == "ok\n"
    assert out.count("Read-only file system") == 3  # /usr, .git, .foundry
    assert "host tmp" not in out and secrets["file:.ssh/id_rsa"] not in out
    assert "foundry.db" not in out and "gh" not in out.split()  # ~/.config and FOUNDRY_HOME
    assert "CapEff:\t0000000000000000" in out and "foundry-sandbox" in out
    procs = int(out.split("procs=")[1].split()[0])
    assert procs < 10  # a /proc of its own: only the sandbox's processes
    assert not (box.workdir / ".git" / "hooks").exists()


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_commands_get_only_the_allow_list_and_what_the_user_names(
    tmp_path: Path, mode: str, secrets: dict[str, str], monkeypatch: pytest.MonkeyPatch, request
) -> None:
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    monkeypatch.setenv("PROJECT_SETTING", "named")
    monkeypatch.setenv("OTHER_SETTING", "unnamed")
    box = _box(
        tmp_path, sandbox="auto" if mode == "bwrap" else "off", env_passthrough=["PROJECT_SETTING"]
    )
    try:
        result = _run(box, "env")
    finally:
        box.close()
    names = {line.split("=", 1)[0] for line in result.output.splitlines() if "=" in line}
    assert "PROJECT_SETTING=named" in result.output and "unnamed" not in result.output
    for name in SECRET_NAMES:
        assert secrets[name] not in result.output, name
    assert {"PATH", "HOME", "TMPDIR", "LANG"} <= names
    assert names <= set(sandbox_env.BASE_ENV) | set(sandbox_env.TOOLCHAIN_ENV) | {
        "HOME",
        "TMPDIR",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
        "PYTHONDONTWRITEBYTECODE",
        "PROJECT_SETTING",
        containment.COOKIE_ENV,
    }
    assert f"HOME={os.environ['HOME']}\n" not in result.output


def test_the_model_api_key_cannot_be_passed_through() -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        with pytest.raises(ConfigError, match=f"{name} is the model API key"):
            parse_config({"build": {"env_passthrough": [name]}}, "cache_config.json")


@pytest.mark.parametrize("mode", ["bwrap", "off-cgroup", "off-cookie"])
def test_setsid_and_double_fork_children_end_with_the_command(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch, request
) -> None:
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    elif mode == "off-cookie":
        monkeypatch.setattr(PidsCgroup, "create", classmethod(lambda cls, max_pids: None))
    elif not _cgroup_available():
        pytest.skip("no writable pids cgroup here")
    marker = f"sleep 62{os.getpid() % 100:02d}"
    box = _box(tmp_path, sandbox="auto" if mode == "bwrap" else "off")
    try:
        result = _run(
            box,
            f"setsid {marker}1 & ({marker}2 &); nohup {marker}3 >/dev/null 2>&1 & "
            f"setsid sh -c '{marker}4 & exit 0' & echo started",
        )
    finally:
        box.close()
    assert result.passed and "started" in result.output
    assert result.duration_s < 5  # the pipe did not wait for the detached children
    assert _alive(marker) == []


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_the_process_limit_holds_for_the_whole_tree(tmp_path: Path, mode: str, request) -> None:
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    if not _process_limit_enforced():
        pytest.skip("root without a writable pids cgroup: no process limit can be enforced")
    script = (
        "import subprocess\nstarted = 0\nfor _ in range(60):\n    try:\n"
        "        subprocess.Popen(['sleep', '6301'])\n        started += 1\n"
        "    except OSError:\n        pass\nprint('started', started)\n"
    )
    box = _box(
        tmp_path, sandbox="auto" if mode == "bwrap" else "off", limits=SandboxLimits(processes=20)
    )
    (box.workdir / "flood.py").write_text(script)
    try:
        result = _run(box, f"{PY} flood.py")
    finally:
        box.close()
    started = int(result.output.split("started")[-1].split()[0])
    assert 5 < started < 20, result.output  # the shell and python count too
    assert _alive("sleep 6301") == []


def test_a_fork_bomb_is_contained_and_ends_with_its_command(tmp_path: Path, bwrap: None) -> None:
    if not _process_limit_enforced():
        pytest.skip("root without a writable pids cgroup: a fork bomb would not be bounded")
    box = _box(tmp_path, limits=SandboxLimits(processes=32))
    started = time.monotonic()
    try:
        result = _run(
            box, "fbomb6501() { fbomb6501 | fbomb6501 & }; fbomb6501; sleep 30", timeout=3
        )
    finally:
        box.close()
    assert time.monotonic() - started < 10
    assert not result.passed and "fork" in result.output.lower()
    assert _alive("fbomb6501") == []


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_memory_cpu_and_file_size_are_limited(tmp_path: Path, mode: str, request) -> None:
    if mode == "bwrap":
        request.getfixturevalue("bwrap")
    limits = SandboxLimits(memory_mb=300, cpu_s=1, file_size_mb=1)
    box = _box(tmp_path, sandbox="auto" if mode == "bwrap" else "off", limits=limits)
    try:
        memory = _run(box, f"{PY} -c 'x = bytearray(600 * 1024 * 1024); print(\"allocated\")'")
        cpu = _run(box, f"{PY} -c 'while True: pass'", timeout=15)
        size = _run(box, "head -c 3000000 /dev/zero > big.bin")
    finally:
        box.close()
    assert "MemoryError" in memory.output and "allocated" not in memory.output
    assert not cpu.timed_out and cpu.exit_code != 0 and cpu.duration_s < 10
    assert size.exit_code != 0 and (box.workdir / "big.bin").stat().st_size == 1024 * 1024


def test_the_network_is_a_per_phase_setting(tmp_path: Path, bwrap: None) -> None:
    config = BuildConfig()
    assert [config.network_for(p) for p in ("scout", "architect", "builder", "test")] == [
        False,
        False,
        True,
        True,
    ]
    assert BuildConfig(network={"scout": True}).network_for("scout") is True
    assert BuildConfig(network={"scout": True}).network_for("architect") is False
    assert BuildConfig(network=False).network_for("builder") is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        probe = (
            f'{PY} -c \'import socket; socket.create_connection(("127.0.0.1", {port}), 2); '
            'print("connected")\''
        )
        box = _box(tmp_path)
        try:
            online = _run(box, probe, network=True)
            offline = _run(box, probe, network=False)
        finally:
            box.close()
    assert "connected" in online.output
    assert "connected" not in offline.output and "ConnectionRefusedError" in offline.output


def test_containment_kills_by_cookie_where_no_cgroup_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PidsCgroup, "create", classmethod(lambda cls, max_pids: None))
    held = Containment.start(None)
    assert not held.caps_processes
    import subprocess

    env = {**os.environ, containment.COOKIE_ENV: held.cookie}
    child = subprocess.Popen(["setsid", "sleep", "6401"], env=env)
    other = subprocess.Popen(["sleep", "6402"])  # no cookie: not ours to kill
    try:
        deadline = time.monotonic() + 5
        while child.pid not in containment.processes_with_cookie(held.cookie):
            assert time.monotonic() < deadline, "the child never showed its cookie"
            time.sleep(0.01)  # until it has exec'd: before, it shows pytest's environment
        held.end()
        assert child.wait(timeout=5) == -9
        assert other.poll() is None
    finally:
        for process in (child, other):
            process.kill()
            process.wait()


def test_the_private_tmp_is_capped_at_the_file_size_limit(tmp_path: Path, bwrap: None) -> None:
    box = _box(tmp_path, limits=SandboxLimits(file_size_mb=1))
    chunk = "head -c 600000 /dev/zero >"
    try:
        result = _run(box, f"{chunk} /tmp/a && {chunk} /tmp/b && echo both-written")
    finally:
        box.close()
    assert "No space left on device" in result.output and "both-written" not in result.output


def test_the_build_says_when_the_process_limit_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.getuid() != 0:
        pytest.skip("RLIMIT_NPROC holds for a regular user: nothing to say")
    monkeypatch.setattr(PidsCgroup, "create", classmethod(lambda cls, max_pids: None))
    confined = Sandbox(tmp_path, BuildConfig(), found=sandbox_module.Availability("/usr/bin/bwrap"))
    assert (confined.notice() or "").startswith("build.limits.processes cannot be enforced here")
    unconfined = _box(tmp_path, sandbox="off")
    assert "no process limit either" in (unconfined.notice() or "")
    limitless = _box(tmp_path, sandbox="off", limits=SandboxLimits(processes=None))
    assert "no process limit" not in (limitless.notice() or "")


def test_a_command_dies_with_foundry(tmp_path: Path, bwrap: None) -> None:
    import subprocess

    workdir = tmp_path / "work"
    workdir.mkdir()
    # A marker of this run's own: a process an earlier run left cannot be mistaken for it.
    seconds = 6000 + int.from_bytes(os.urandom(2), "little") % 3000
    marker = f"sleep {seconds}"
    foundry = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from foundry.config import BuildConfig; "
            "from foundry.orchestrator.sandbox import Sandbox; "
            "from foundry.orchestrator.shell import run_command; "
            "box = Sandbox(Path(sys.argv[1]), BuildConfig()); "
            # The marker is computed: foundry's own command line must not contain it.
            "run_command(f'sleep {int(sys.argv[2]) + 1}', box.workdir, timeout_s=60, "
            "output_limit=100, sandbox=box)",
            str(workdir),
            str(seconds - 1),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its private HOME: removed with tmp_path
    )
    try:
        deadline = time.monotonic() + 20
        while not _alive(marker):
            assert time.monotonic() < deadline and foundry.poll() is None
            time.sleep(0.05)
    finally:
        foundry.kill()  # SIGKILL: foundry cannot clean up; the kernel ends the sandbox
        foundry.wait()
    deadline = time.monotonic() + 5
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(marker) == []


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        ({"network": {"deploy": True}}, "unknown phase 'deploy'"),
        ({"env_passthrough": ["NOT-A-NAME"]}, "'NOT-A-NAME' is not an environment variable"),
        ({"sandbox": "sometimes"}, "'build.sandbox'"),
        ({"limits": {"proceses": 5}}, "did you mean 'processes'"),
        ({"limits": {"memory_mb": 0}}, "'build.limits.memory_mb'"),
    ],
)
def test_sandbox_settings_are_checked(build: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_config({"build": build}, "cache_config.json")


def test_a_toolchain_under_tmp_stays_usable_inside_the_private_tmp(
    tmp_path: Path, bwrap: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CI checkout with its venv under /tmp (/tmp/clone/.venv/bin): the private /tmp must
    # not hide the interpreter the test command names, nor a PATH directory there; both are
    # read-only inside, and reachable by the uid a command runs as when foundry is root.
    base = Path(tempfile.mkdtemp(prefix="foundry-toolchain-", dir="/tmp"))
    try:
        tools = base / "venv" / "bin"
        tools.mkdir(parents=True)
        for directory in (base, base / "venv", tools):
            directory.chmod(0o755)  # as a real checkout and venv are
        script = tools / "hello-tool"
        script.write_text("#!/bin/sh\necho tool-ran\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
        assert str(tools) in sandbox_paths.runtime_dirs_under_tmp()
        box = _box(tmp_path)
        try:
            result = _run(box, f"hello-tool && touch {shlex.quote(str(tools))}/x || echo ro")
        finally:
            box.close()
        assert "tool-ran" in result.output and "ro" in result.output.split(), result.output
        assert not (tools / "x").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_ledger_inside_the_working_directory_stays_hidden(tmp_path: Path, bwrap: None) -> None:
    # --dir . --db ./foundry.db: the working directory's bind must not uncover the ledger.
    workdir = tmp_path / "work"
    workdir.mkdir()
    ledger = workdir / "foundry.db"
    ledger.write_text("ledger-secret")
    box = Sandbox(workdir, BuildConfig(), hidden=foundry_paths(ledger))
    try:
        result = _run(box, "cat foundry.db; echo changed > foundry.db || echo refused")
    finally:
        box.close()
    assert "ledger-secret" not in result.output and "refused" in result.output
    assert ledger.read_text() == "ledger-secret"
