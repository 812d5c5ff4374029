"""write_atomic: the whole new content or the old one, the file's mode kept, no temp left."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from foundry.fsutil import write_atomic


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_text_bytes_and_creates_the_parent(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    write_atomic(target, "héllo\r\nworld\n")
    assert target.read_bytes() == "héllo\r\nworld\n".encode()  # newlines untranslated
    write_atomic(target, b"\x00\xff", fsync=True)
    assert target.read_bytes() == b"\x00\xff"
    assert _leftovers(target.parent) == []


def test_keeps_an_existing_files_mode_and_applies_the_umask_to_a_new_one(tmp_path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("old")
    script.chmod(0o750)
    write_atomic(script, "#!/bin/sh\n")
    assert stat.S_IMODE(script.stat().st_mode) == 0o750
    assert script.read_text() == "#!/bin/sh\n"

    old_umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "new.txt", "x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644


def test_an_explicit_mode_wins(tmp_path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o644)
    write_atomic(target, "new", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_rename_removes_the_temp_and_leaves_the_target(tmp_path) -> None:
    target = tmp_path / "dir-in-the-way"
    (target / "child").mkdir(parents=True)  # os.replace of a file onto a non-empty dir fails
    with pytest.raises(OSError):
        write_atomic(target, "data")
    assert target.is_dir() and (target / "child").is_dir()
    assert _leftovers(tmp_path) == []


def test_an_interrupted_write_removes_the_temp_and_keeps_the_old_content(
    tmp_path, monkeypatch
) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def interrupted(fd, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_reader_never_sees_a_partial_file(tmp_path) -> None:
    target = tmp_path / "big.txt"
    versions = [ch * 400_000 for ch in "abcdefgh"]  # large enough for many write() calls
    write_atomic(target, versions[0])
    seen: set[str] = set()
    bad: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            text = target.read_text()
            if text not in versions:
                bad.append(len(text))
            seen.add(text[:1])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(5):
            for version in versions:
                write_atomic(target, version)
    finally:
        done.set()
        thread.join()
    assert bad == []
    assert len(seen) > 1  # the reader really overlapped the writes
    assert _leftovers(tmp_path) == []
