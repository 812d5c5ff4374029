"""Cache keys are names, never paths: attacks on the prefix-cache dir through `foundry cache`.

Each test plants a manifest or files in $FOUNDRY_HOME/prefix-cache (a temp dir) and a victim
file beside it, outside the cache dir, and checks that the victim survives and that the
command neither crashes nor follows a planted link. No mlx needed: nothing is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.local.prefix_store import PrefixCacheStore, PrefixIdentity, cache_key

OLD = "2000-01-01T00:00:00Z"  # past any TTL
GOOD = "a" * 40  # a key as cache_key makes them
SECRET = b"do not delete me"


def _cache(home: Path) -> Path:
    cache = home / "prefix-cache"
    cache.mkdir(exist_ok=True)
    return cache


def _entry(**fields) -> dict:
    return {"model": "evil", "size_bytes": 10, "created_at": OLD, "last_used_at": OLD, **fields}


def _manifest(cache: Path, entries: dict) -> None:
    (cache / "manifest.json").write_text(json.dumps({"version": 1, "entries": entries}))


def _victim(tmp_path: Path, name: str = "victim.safetensors") -> Path:
    victim = tmp_path / name
    victim.write_bytes(SECRET)
    return victim


def _age(path: Path) -> None:
    os.utime(path, (1e9, 1e9), follow_symlinks=False)  # older than prune's grace period


def _path_keys(cache: Path, victim: Path) -> dict[str, str]:
    """Keys that name the victim (less its .safetensors) as paths, three ways."""
    target = str(victim)[: -len(".safetensors")]
    return {
        "relative": os.path.relpath(target, cache),
        "absolute": target,
        "inner dots": "x/../" + os.path.relpath(target, cache),
    }


@pytest.mark.parametrize("how", ["relative", "absolute", "inner dots"])
@pytest.mark.parametrize(
    "command", [("prune",), ("prune", "evict"), ("clear",), ("clear", "*"), ("clear", "..")]
)
def test_a_path_for_a_key_never_reaches_a_file_outside_the_cache(
    cli, isolated_env, tmp_path, how, command
) -> None:
    cache = _cache(isolated_env)
    victim = _victim(tmp_path)
    key = _path_keys(cache, victim)[how]
    (cache / "x").mkdir()  # so that "x/../" resolves
    (cache / f"{GOOD}.safetensors").write_bytes(b"real")
    args = list(command)
    if command == ("prune", "evict"):
        # Fresh, but far over the byte cap: the LRU pass would evict it.
        config = tmp_path / "cache_config.json"
        config.write_text(json.dumps({"prefix_cache": {"max_bytes": 5}}))
        _manifest(cache, {key: _entry(last_used_at="2999-01-01T00:00:00Z", size_bytes=10**9)})
        args = ["prune", "--config", str(config)]
    else:
        _manifest(cache, {key: _entry(), GOOD: _entry()})
    result = cli("cache", *args, "--json")
    assert result.exit_code == 0, result.stderr
    assert victim.read_bytes() == SECRET
    out = json.loads(result.stdout)
    assert [r["key"] for r in out["removed"]] == ([] if command[-1] in ("evict", "..") else [GOOD])
    assert out["skipped_keys"] == [key]


def test_keys_that_are_not_names_are_skipped_not_a_crash(cli, isolated_env) -> None:
    cache = _cache(isolated_env)
    bad = ["a\x00b", "k" * 5000, "", ".", "..", "a/b", "/", "new\nline", "dot.ted", "-x"]
    (cache / f"{GOOD}.safetensors").write_bytes(b"real")
    _manifest(
        cache, {**{k: _entry() for k in bad}, GOOD: _entry(last_used_at="2999-01-01T00:00:00Z")}
    )
    for args in (("list", "--json"), ("stats", "--json"), ("list",), ("stats",)):
        result = cli("cache", *args)
        assert result.exit_code == 0, result.stderr
    assert [r["key"] for r in json.loads(cli("cache", "list", "--json").stdout)["entries"]] == [
        GOOD
    ]
    result = cli("cache", "prune", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(json.loads(result.stdout)["skipped_keys"]) == sorted(bad)
    # Reported once: prune drops the records (never a file), and the next prune is quiet.
    assert list(json.loads((cache / "manifest.json").read_text())["entries"]) == [GOOD]
    assert "skipped" not in cli("cache", "prune").stdout
    _manifest(cache, {k: _entry() for k in bad})
    assert "skipped 10 manifest entries" in cli("cache", "clear").stdout
    assert json.loads((cache / "manifest.json").read_text())["entries"] == {}


@pytest.mark.parametrize("command", ["prune", "clear"])
def test_a_payload_that_is_a_link_out_is_unlinked_never_followed(
    cli, isolated_env, tmp_path, command
) -> None:
    cache = _cache(isolated_env)
    victim = _victim(tmp_path, "secret.bin")
    link = cache / f"{GOOD}.safetensors"
    link.symlink_to(victim)
    _age(link)
    _manifest(cache, {GOOD: _entry()})
    # A link is not a saved prefix: not listed, and its target's size is never counted.
    assert json.loads(cli("cache", "list", "--json").stdout)["entries"] == []
    result = cli("cache", command)
    assert result.exit_code == 0, result.stderr
    assert victim.read_bytes() == SECRET
    assert not link.is_symlink() if command == "prune" else link.is_symlink()
    assert json.loads(cli("cache", "stats", "--json").stdout)["entries"] == 0


def test_prune_removes_a_dangling_link_and_leaves_a_directory(cli, isolated_env) -> None:
    cache = _cache(isolated_env)
    dangling = cache / f"{'c' * 40}.safetensors"
    dangling.symlink_to(cache / "nowhere")
    folder = cache / f"{'d' * 40}.safetensors"
    folder.mkdir()
    (folder / "inside").write_bytes(SECRET)
    for path in (dangling, folder):
        _age(path)
    _manifest(cache, {"d" * 40: _entry()})  # an entry whose "file" is a directory
    for args in (("prune",), ("clear",), ("list",)):
        result = cli("cache", *args)
        assert result.exit_code == 0, result.stderr
    assert not dangling.is_symlink()
    assert (folder / "inside").read_bytes() == SECRET


def test_a_link_planted_as_the_manifest_lock_is_not_followed(cli, isolated_env, tmp_path) -> None:
    cache = _cache(isolated_env)
    planted = tmp_path / "created-outside"
    (cache / "manifest.lock").symlink_to(planted)
    _manifest(cache, {GOOD: _entry()})  # no file: an orphan, so prune writes the manifest
    result = cli("cache", "prune")
    assert not planted.exists()
    assert result.exit_code == 1 and "manifest.lock" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_manifest_too_deep_or_too_large_is_read_as_empty(cli, isolated_env, monkeypatch) -> None:
    import foundry.local.manifest as manifest

    cache = _cache(isolated_env)
    (cache / "manifest.json").write_text("[" * 200_000)
    result = cli("cache", "list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["entries"] == []
    (cache / f"{GOOD}.safetensors").write_bytes(b"real")
    _manifest(cache, {GOOD: _entry(last_used_at="2999-01-01T00:00:00Z")})
    monkeypatch.setattr(manifest, "MANIFEST_LIMIT", 64)
    result = cli("cache", "list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["entries"] == []


def test_a_manifest_that_is_a_fifo_does_not_hang_the_command(isolated_env) -> None:
    cache = _cache(isolated_env)
    os.mkfifo(cache / "manifest.json")
    result = subprocess.run(
        [sys.executable, "-m", "foundry", "cache", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FOUNDRY_HOME": str(isolated_env)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["entries"] == []


class _Recorder:
    """A codec that records what it is asked to read (nothing should be, here)."""

    def __init__(self) -> None:
        self.read_paths: list[Path] = []

    def read(self, path: Path):
        self.read_paths.append(path)
        return Path(path).read_bytes(), {}

    def checksum(self, data) -> str:
        return "0"

    def nbytes(self, data) -> int:
        return len(data)

    def holds(self, data, n_tokens: int) -> bool:
        return True


def test_a_payload_that_is_a_link_is_a_miss_and_never_read(tmp_path) -> None:
    victim = _victim(tmp_path, "secret.bin")
    codec = _Recorder()
    store = PrefixCacheStore(tmp_path / "store", codec=codec)
    identity, tokens = PrefixIdentity({"m": 1}, model="tiny"), [1, 2, 3]
    link = store.path_for(cache_key(identity, tokens))
    link.symlink_to(victim)
    assert not store.has(identity, tokens)
    lookup = store.load(identity, tokens)
    assert not lookup.hit and codec.read_paths == []
    assert victim.read_bytes() == SECRET


def test_a_key_that_is_not_a_name_never_becomes_a_path(tmp_path) -> None:
    from foundry.errors import CacheStoreError

    store = PrefixCacheStore(tmp_path / "store")
    for key in ("../x", str(tmp_path / "abs"), "a\x00b", "", "k" * 500):
        with pytest.raises(CacheStoreError):
            store.path_for(key)
        with pytest.raises(CacheStoreError), store.lock(key):
            pass
    assert store.path_for(GOOD) == store.dir / f"{GOOD}.safetensors"


def test_a_locks_dir_that_is_a_link_out_is_refused(tmp_path) -> None:
    from foundry.errors import CacheStoreError

    outside = tmp_path / "outside"
    outside.mkdir()
    store = PrefixCacheStore(tmp_path / "store")
    (store.dir / "locks").rmdir()
    (store.dir / "locks").symlink_to(outside)
    with pytest.raises(CacheStoreError, match="locks"), store.lock(GOOD):
        pass
    assert list(outside.iterdir()) == []
