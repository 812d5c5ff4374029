"""The sandbox against a model that wants the host: write the kernel's settings through
/proc, trace the sandbox's init, reach the kernel's keyring, namespaces and mounts, leave a
set-user-id root binary behind, outlive a dead foundry. Through the real build loop and
real bubblewrap, as foundry's root user (these machines) and as a regular user.

Probes never change the host: a procfs file is opened for writing and closed with nothing
written; a trace is detached at once."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from foundry.config import BuildConfig
from foundry.orchestrator import containment
from foundry.orchestrator.containment import Containment, PidsCgroup
from foundry.orchestrator.sandbox import Sandbox, foundry_paths
from foundry.orchestrator.shell import run_command
from tests.orchestrator_helpers import finish, tool
from tests.test_sandbox import PY, _alive, _build_in_a_process

NOBODY = 65534
X86_64 = os.uname().machine == "x86_64"
# What a hostile command tries, each printed as "PROBE name result" (x86-64 numbers).
PROBE = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)

def call(number, *args):
    result = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

writable = []
for top in ("/proc/sys",):
    for current, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(current, name)
            try:
                os.close(os.open(path, os.O_WRONLY))  # opened for writing, nothing written
                writable.append(path)
            except OSError:
                pass
for path in ("/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern"):
    try:
        os.close(os.open(path, os.O_WRONLY))
        writable.append(path)
    except OSError:
        pass
print("PROBE writable", len(writable), writable[:3])
print("PROBE uid", os.getuid(), os.geteuid())
attached = call(101, 16, 1, 0, 0)  # PTRACE_ATTACH to the sandbox's init
if attached == "ok":
    call(101, 17, 1, 0, 0)  # PTRACE_DETACH: the probe only shows it could
print("PROBE ptrace", attached)
print("PROBE keyctl", call(250, 0, -3, 0))  # KEYCTL_GET_KEYRING_ID of the session keyring
print("PROBE unshare", call(272, 0x10000000))  # a user namespace: capabilities inside it
print("PROBE mount", call(165, 0, 0, 0, 0, 0))
print("PROBE perf_event_open", call(298, 0, 0, -1, -1, 0))
print("PROBE userfaultfd", call(323, 0))
print("PROBE bpf", call(321, 0, 0, 0))
print("PROBE init_module", call(175, 0, 0, 0))
"""
REFUSED_CALLS = ("ptrace", "keyctl", "unshare", "mount", "perf_event_open", "userfaultfd", "bpf")


def _probes(text: str) -> dict[str, str]:
    found = {}
    for line in text.replace("\\n", "\n").splitlines():
        if line.startswith("PROBE "):
            _word, name, value = line.split(" ", 2)
            found[name] = value
    return found


def _assert_held(probes: dict[str, str]) -> None:
    assert probes["writable"].startswith("0 "), probes["writable"]
    for name in REFUSED_CALLS:
        assert probes[name] == "EPERM", (name, probes[name])


@pytest.mark.skipif(not X86_64, reason="the probe's syscall numbers are x86-64's")
def test_a_hostile_model_reaches_no_kernel_setting_no_trace_and_no_root(
    tmp_path: Path, bwrap: None
) -> None:
    steps = [
        (
            [
                tool("write_file", path="probe.py", content=PROBE),
                tool("run_command", command=f"{PY} probe.py"),
            ],
            "tool_use",
        ),
        ([finish("built", "# Build log\n")], "tool_use"),
    ]
    status, seen = _build_in_a_process(tmp_path, steps, ["builder"], {"command_timeout_s": 20})
    assert status == "completed", seen
    probes = _probes(seen)
    _assert_held(probes)
    if os.getuid() == 0:  # foundry as root: the command is not
        assert probes["uid"] == f"{NOBODY} {NOBODY}"


def test_a_command_leaves_no_root_file_and_no_set_user_id_binary(
    tmp_path: Path, bwrap: None
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "mine.txt").write_text("the user's\n")
    box = Sandbox(workdir, BuildConfig(), hidden=foundry_paths())
    try:
        result = run_command(
            "cp /bin/true escalate && chmod 4755 escalate; echo more >> mine.txt; "
            "mkdir -p made/deeper && echo x > made/deeper/f; mv mine.txt moved.txt; id -u",
            workdir,
            timeout_s=20,
            output_limit=5000,
            sandbox=box,
            network=False,
        )
    finally:
        box.close()
    assert result.exit_code == 0, result.output
    owner = os.stat(workdir).st_uid
    for path in [workdir, *workdir.rglob("*")]:
        info = os.lstat(path)
        assert info.st_uid == owner, f"{path} belongs to {info.st_uid}"
        assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{path} is set-id"
    assert (workdir / "moved.txt").read_text() == "the user's\nmore\n"
    if os.getuid() == 0:
        assert result.output.split()[-1] == str(NOBODY)


_AS_A_USER = r"""
import json, sys
from pathlib import Path
from foundry.config import BuildConfig
from foundry.orchestrator.sandbox import Sandbox
from foundry.orchestrator.shell import run_command
box = Sandbox(Path(sys.argv[1]), BuildConfig(sandbox="require"))
result = run_command(sys.argv[2], box.workdir, timeout_s=20, output_limit=20000, sandbox=box,
                     network=False)
box.close()
print(json.dumps({"output": result.output, "confined": box.confined}))
"""


@pytest.mark.skipif(not X86_64, reason="the probe's syscall numbers are x86-64's")
@pytest.mark.skipif(os.getuid() != 0, reason="becoming another user takes root")
def test_as_a_regular_user_the_sandbox_holds_too(bwrap: None) -> None:
    # foundry run by a regular user (nobody), from Debian's python with copies of the
    # packages it needs: nothing under root's 0700 home is on its way.
    import json

    base = Path(tempfile.mkdtemp(prefix="foundry-as-user-", dir="/tmp"))
    try:
        site = base / "site"
        import annotated_types
        import pydantic
        import pydantic_core
        import typing_extensions
        import typing_inspection

        import foundry

        for module in (foundry, pydantic, pydantic_core, annotated_types, typing_inspection):
            source = Path(module.__file__).parent
            shutil.copytree(source, site / source.name, ignore=shutil.ignore_patterns("*.pyc"))
        shutil.copy(typing_extensions.__file__, site)
        workdir = base / "work"
        workdir.mkdir()
        (workdir / "probe.py").write_text(PROBE)
        for path in [base, *base.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        base.chmod(0o755)
        python = shutil.which("python3", path="/usr/bin") or sys.executable
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(base)}
        env["FOUNDRY_HOME"] = str(base / "foundry-home")
        proc = subprocess.run(
            [python, "-c", _AS_A_USER, str(workdir), f"{python} probe.py; id -u; touch made"],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            env=env,
            cwd=base,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["confined"], out
        probes = _probes(out["output"])
        _assert_held(probes)
        assert probes["uid"] == f"{NOBODY} {NOBODY}"
        assert os.stat(workdir / "made").st_uid == NOBODY
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_next_foundry_ends_what_a_killed_one_left_in_its_cgroup(bwrap: None) -> None:
    probe = PidsCgroup.create(None)
    if probe is None:
        pytest.fail("no pids cgroup can be made here: this test needs root on cgroup v1")
    probe.remove()
    # A foundry that died (its pid is gone) and left a sandboxed command in its cgroup.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    assert not os.path.exists(f"/proc/{dead_pid}")
    parent = containment._own_cgroup_dirs()[0]
    group = parent / f"foundry-{dead_pid}-{os.urandom(4).hex()}"
    group.mkdir()
    seconds = 7000 + int.from_bytes(os.urandom(2), "little") % 2000
    left = subprocess.Popen(["sleep", str(seconds)], start_new_session=True)
    try:
        (group / "cgroup.procs").write_text(str(left.pid))
        Containment.start(8).end()  # any later command of any foundry
        deadline = time.monotonic() + 5
        while left.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left.poll() is not None, "the dead build's command is still running"
        assert not group.exists()
    finally:
        left.kill()
        left.wait()
        if group.exists():
            group.rmdir()
    assert _alive(f"sleep {seconds}") == []


_FOUNDRY_RUNNING_A_COMMAND = (
    "import sys; from pathlib import Path; from foundry.config import BuildConfig; "
    "from foundry.orchestrator.sandbox import Sandbox; "
    "from foundry.orchestrator.shell import run_command; "
    "box = Sandbox(Path(sys.argv[1]), BuildConfig()); "
    # The marker is computed: foundry's own command line must not contain it.
    "run_command(f'sleep {int(sys.argv[2]) + 1}', box.workdir, timeout_s=60, output_limit=100, "
    "sandbox=box)"
)


def test_no_sandbox_outlives_a_foundry_killed_while_bwrap_starts(
    tmp_path: Path, bwrap: None
) -> None:
    # bwrap arms --die-with-parent only after its set-up: a foundry SIGKILLed the moment
    # bwrap appears left the sandbox's init and the command running (about half the time).
    survivors = []
    for round_ in range(6):
        workdir = tmp_path / f"work-{round_}"
        workdir.mkdir()
        seconds = 5000 + int.from_bytes(os.urandom(2), "little") % 900
        marker = f"sleep {seconds}"
        foundry = subprocess.Popen(
            [sys.executable, "-c", _FOUNDRY_RUNNING_A_COMMAND, str(workdir), str(seconds - 1)],
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )
        try:
            deadline = time.monotonic() + 20
            while not _alive(marker):  # bwrap's own command line names it first
                assert time.monotonic() < deadline and foundry.poll() is None
        finally:
            foundry.kill()
            foundry.wait()
        deadline = time.monotonic() + 5
        while _alive(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _alive(marker)
        survivors += left
        for line in left:  # leave nothing behind, whatever the verdict
            subprocess.run(["pkill", "-9", "-f", line.split(" -- ")[-1].strip()], check=False)
    assert survivors == []
