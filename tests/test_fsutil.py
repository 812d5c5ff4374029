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


# -- the *_beneath functions: foundry's own files in a directory a model works in ------------


def test_reads_beneath_follow_no_link_anywhere_on_the_way(tmp_path) -> None:
    from foundry.fsutil import NotAFile, kind_beneath, read_beneath

    secret = tmp_path / "secret"
    secret.write_text("key")
    root = tmp_path / "work"
    (root / "real").mkdir(parents=True)
    (root / "real" / "ok.md").write_text("fine")
    (root / "real" / "file.md").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    assert read_beneath(root, "real/ok.md", 100) == b"fine"
    with pytest.raises(NotAFile, match="real/file.md is a symlink"):
        read_beneath(root, "real/file.md", 100)
    with pytest.raises(NotAFile, match="dirlink is a symlink, not a directory"):
        read_beneath(root, "dirlink/secret", 100)
    with pytest.raises(NotAFile, match="real is a directory"):
        read_beneath(root, "real", 100)
    with pytest.raises(FileNotFoundError):
        read_beneath(root, "real/missing.md", 100)
    assert kind_beneath(root, "real/file.md") == "symlink"
    assert kind_beneath(root, "dirlink/secret") is None
    with pytest.raises(ValueError):
        read_beneath(root, "../secret", 100)


def test_a_fifo_or_an_oversized_file_is_refused_without_reading(tmp_path) -> None:
    from foundry.fsutil import NotAFile, TooLarge, read_beneath

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotAFile, match="pipe is a FIFO"):  # no writer: an open would hang
        read_beneath(tmp_path, "pipe", 100)
    with open(tmp_path / "big", "wb") as handle:
        handle.truncate(5 * 1024 * 1024)  # sparse: nothing to read, only the size
    with pytest.raises(TooLarge, match="big is 5.0 MiB, over the 1.0 MiB limit"):
        read_beneath(tmp_path, "big", 1024 * 1024)


def test_write_beneath_replaces_a_planted_link_and_never_writes_through_it(tmp_path) -> None:
    from foundry.fsutil import NotAFile, write_beneath

    target = tmp_path / "outside" / "nologin"
    root = tmp_path / "work"
    root.mkdir()
    (root / ".gitignore").symlink_to(target)  # dangling
    write_beneath(root, ".gitignore", "x\n")
    assert not target.exists() and not (root / ".gitignore").is_symlink()
    assert (root / ".gitignore").read_text() == "x\n"
    (root / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(NotAFile, match="linkdir is a symlink"):
        write_beneath(root, "linkdir/new.md", "x")
    write_beneath(root, ".foundry/a/b.md", "made")  # missing directories are made
    assert (root / ".foundry/a/b.md").read_text() == "made"
    (root / "d").mkdir()
    with pytest.raises(NotAFile, match="d is a directory"):
        write_beneath(root, "d", "x")
    assert _leftovers(root) == [] and not (tmp_path / "outside").exists()
