"""Two foundry processes running llama.cpp on one machine share its cores: each registers
itself, and a context uses cores / live processes threads for its next request, from a
thread pool that sleeps while it waits. (What it buys is measured by
bench/shared_cpu_bench.py, not here.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.local.cpu_share import CpuShare, _start_time, registry_dir
from tests.tiny_model import write_tiny_gguf


@pytest.fixture
def other_process():
    """Another live process, registered as a foundry llama.cpp process would be."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        directory = registry_dir()
        directory.mkdir(parents=True, exist_ok=True)
        stamp = None
        while stamp is None:  # /proc/PID/stat exists as soon as the fork returns
            stamp = _start_time(proc.pid)
        (directory / str(proc.pid)).write_text(stamp)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_process_alone_takes_every_core_and_two_take_half_each(other_process) -> None:
    share = CpuShare(4)
    try:
        assert share.live() == 2 and share.threads() == 2
        other_process.kill()
        other_process.wait()
        assert share.live() == 1 and share.threads() == 4
        # The dead one's entry is gone, and so is ours once closed.
        assert sorted(p.name for p in registry_dir().iterdir()) == [str(os.getpid())]
    finally:
        share.close()
    assert list(registry_dir().iterdir()) == []


def test_a_reused_pid_does_not_count_and_never_fewer_than_one_thread(other_process) -> None:
    (registry_dir() / str(other_process.pid)).write_text("1")  # another start time
    share = CpuShare(1)
    try:
        assert share.live() == 1 and share.threads() == 1
        (registry_dir() / str(other_process.pid)).write_text(_start_time(other_process.pid) or "")
        assert share.live() == 2 and share.threads() == 1
    finally:
        share.close()


@pytest.mark.llamacpp
def test_a_context_fits_its_threads_before_each_request(
    tiny_model_dir, tmp_path: Path, other_process
) -> None:
    import llama_cpp

    from foundry.local.engine import StepTimes
    from foundry.local.llamacpp_engine import LlamaCppModel, default_threads, generate_tokens

    path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    cores = default_threads()
    model = LlamaCppModel(path, "tiny")
    try:
        assert model.threads.pool  # ggml's pool with poll 0 is attached
        assert llama_cpp.llama_n_threads(model.llm.ctx) == max(1, cores // 2)
        other_process.kill()
        other_process.wait()
        list(generate_tokens(model, [1, 2, 3], max_tokens=2, temperature=0, times=StepTimes()))
        assert llama_cpp.llama_n_threads(model.llm.ctx) == cores
    finally:
        model.close()
    fixed = LlamaCppModel(path, "tiny", threads=1)
    try:
        list(generate_tokens(fixed, [1, 2, 3], max_tokens=2, temperature=0, times=StepTimes()))
        assert llama_cpp.llama_n_threads(fixed.llm.ctx) == 1  # llamacpp.threads is kept
    finally:
        fixed.close()


def test_the_registry_is_the_users_not_a_homes(tmp_path, monkeypatch) -> None:
    """Two processes with different FOUNDRY_HOMEs share the machine's cores, so they share
    one registry: in $XDG_RUNTIME_DIR, else /tmp/foundry-UID, made private."""
    import stat
    import tempfile

    monkeypatch.delenv("FOUNDRY_CPU_SHARE_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home-a"))
    first = registry_dir()
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home-b"))
    assert registry_dir() == first == tmp_path / "run" / "foundry" / "llamacpp"
    assert stat.S_IMODE((tmp_path / "run" / "foundry").stat().st_mode) == 0o700
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert registry_dir() == tmp_path / "tmp" / f"foundry-{os.getuid()}" / "llamacpp"


@pytest.mark.parametrize("planted", ["world-writable", "symlink"])
def test_a_registry_someone_else_planted_in_tmp_is_not_used(tmp_path, monkeypatch, planted):
    """/tmp is everyone's: a foundry-UID made there first by another user (to be counted as
    one of ours, or to starve us of cores) is refused for the home's own directory."""
    import tempfile

    monkeypatch.delenv("FOUNDRY_CPU_SHARE_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    target = tmp_path / f"foundry-{os.getuid()}"
    if planted == "symlink":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
        target.chmod(0o777)
    assert registry_dir() == tmp_path / "home" / "run" / "llamacpp"
