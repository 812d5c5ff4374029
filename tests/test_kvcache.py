"""The prefix-cache store: a loaded prefix gives the cold computation's logits, or is a miss."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from foundry.local.engine import load_model, model_identity, prefill
from foundry.local.prefix_store import PrefixCacheStore, PrefixIdentity, cache_key

pytestmark = pytest.mark.mlx
TOKENS = [(i * 37 + 11) % 300 + 3 for i in range(64)]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir, "tiny", kv_dtype="auto", max_kv_size=None)


@pytest.fixture
def store(tmp_path):
    return PrefixCacheStore(tmp_path / "store")


@pytest.fixture
def identity(loaded, tmp_path):
    return model_identity(loaded, tmp_path / "hashes.json")


def _prefix_cache(loaded, tokens):
    cache = loaded.make_cache()
    prefill(loaded.model, cache, tokens)
    return cache


@pytest.mark.parametrize("split", [1, 7, 31, 63])
def test_loaded_prefix_gives_the_cold_logits(loaded, store, identity, split) -> None:
    import numpy as np

    cold = prefill(loaded.model, loaded.make_cache(), TOKENS)
    assert store.save(identity, TOKENS[:split], _prefix_cache(loaded, TOKENS[:split])) > 0
    lookup = store.load(identity, TOKENS[:split])
    assert lookup.hit, lookup.reason
    warm = prefill(loaded.model, lookup.cache, TOKENS[split:])
    np.testing.assert_allclose(np.array(warm), np.array(cold), atol=1e-4, rtol=1e-4)
    assert int(np.argmax(np.array(warm))) == int(np.argmax(np.array(cold)))


def test_identity_includes_what_shapes_kv_values(loaded, identity, tmp_path) -> None:
    fields = identity.fields
    assert {
        "files",
        "chat_template",
        "quantization",
        "kv_dtype",
        "max_kv_size",
        "mlx",
        "mlx_lm",
    } <= set(fields)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(fields["files"])
    assert model_identity(loaded, tmp_path / "hashes.json").digest == identity.digest  # memoised


def test_identity_or_token_mismatch_is_a_miss_with_a_reason(loaded, store, identity) -> None:
    prefix = TOKENS[:20]
    store.save(identity, prefix, _prefix_cache(loaded, prefix))
    other = PrefixIdentity({**identity.fields, "kv_dtype": "float16"}, model="tiny")
    miss = store.load(other, prefix)
    assert not miss.hit and "kv_dtype" in miss.reason
    assert not store.load(identity, TOKENS[:19]).hit
    assert not store.load(identity, TOKENS[1:21]).hit
    # A file under the right key whose contents are for other tokens or identity is refused.
    os.replace(
        store.path_for(cache_key(identity, prefix)), store.path_for(cache_key(other, prefix))
    )
    miss = store.load(other, prefix)
    assert not miss.hit and "model identity differs (kv_dtype)" in miss.reason
    store.save(identity, prefix, _prefix_cache(loaded, prefix))
    wrong_tokens = TOKENS[30:50]
    os.replace(
        store.path_for(cache_key(identity, prefix)),
        store.path_for(cache_key(identity, wrong_tokens)),
    )
    miss = store.load(identity, wrong_tokens)
    assert not miss.hit and "token ids differ" in miss.reason


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_are_misses_and_are_removed(loaded, store, identity, damage) -> None:
    prefix = TOKENS[:24]
    store.save(identity, prefix, _prefix_cache(loaded, prefix))
    path = store.path_for(cache_key(identity, prefix))
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}
    path.write_bytes(damaged[damage])
    lookup = store.load(identity, prefix)
    assert not lookup.hit and "corrupt" in lookup.reason
    assert not path.exists() and store.entries() == []


def test_flipped_bits_in_the_kv_data_are_a_corrupt_miss_and_the_file_moves_aside(
    loaded, store, identity
) -> None:
    # The file still parses and its metadata still matches: only the checksum can tell.
    prefix = TOKENS[:24]
    store.save(identity, prefix, _prefix_cache(loaded, prefix))
    path = store.path_for(cache_key(identity, prefix))
    data = bytearray(path.read_bytes())
    tensors_start = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header size
    for i in range(tensors_start + 100, tensors_start + 164):  # XOR over 64 bytes
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    lookup = store.load(identity, prefix)
    assert not lookup.hit and lookup.reason.startswith("corrupt")
    assert not path.exists() and path.with_name(path.name + ".corrupt").exists()
    assert store.entries() == []
    # The next save computes it afresh, and it hits.
    store.save(identity, prefix, _prefix_cache(loaded, prefix))
    assert store.load(identity, prefix).hit


def test_over_the_memory_budget_is_a_miss(loaded, identity, tmp_path) -> None:
    store = PrefixCacheStore(tmp_path / "s", memory_budget_mb=1)
    prefix = TOKENS[:16]
    assert store.save(identity, prefix, _prefix_cache(loaded, prefix)) > 0
    store.memory_budget_bytes = 1000  # as if the cache had grown past the configured budget
    lookup = store.load(identity, prefix)
    assert not lookup.hit and "memory_budget_mb" in lookup.reason
    assert store.path_for(lookup.key).exists()  # too big is not corrupt: the file stays


def test_manifest_counts_hits_and_the_stored_file_is_never_changed(loaded, store, identity) -> None:
    prefix = TOKENS[:32]
    store.save(identity, prefix, _prefix_cache(loaded, prefix))
    path = store.path_for(cache_key(identity, prefix))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for _ in range(2):
        lookup = store.load(identity, prefix)
        prefill(loaded.model, lookup.cache, TOKENS[32:])  # extends the in-memory copy only
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    (entry,) = store.entries()
    assert entry["hits"] == 2 and entry["n_tokens"] == 32 and entry["model"] == "tiny"
    assert entry["size_bytes"] == path.stat().st_size
    assert store.stats()["hits"] == 2 and store.stats()["entries"] == 1


def test_lru_cap_and_ttl(loaded, identity, tmp_path) -> None:
    store = PrefixCacheStore(tmp_path / "s")
    sizes = []
    for n in (8, 9, 10):
        sizes.append(store.save(identity, TOKENS[:n], _prefix_cache(loaded, TOKENS[:n])))
        time.sleep(0.002)
    store.load(identity, TOKENS[:8])  # the oldest becomes the most recently used
    store.max_bytes = sizes[0] + sizes[2] + 10
    removed = store.enforce_limits()
    assert [r["n_tokens"] for r in removed] == [9]
    assert sorted(r["n_tokens"] for r in store.entries()) == [8, 10]
    result = store.prune(now=time.time() + 31 * 86400)
    assert sorted(r["n_tokens"] for r in result["removed"]) == [8, 10]
    assert store.entries() == [] and not list(store.dir.glob("*.safetensors"))


def test_prune_removes_stale_temp_files_and_unknown_files(store) -> None:
    two_minutes_ago = (time.time() - 120, time.time() - 120)
    stale = store.dir / ".tmp-abc-999999999-deadbeef.safetensors"  # no such pid
    stale.write_bytes(b"partial")
    os.utime(stale, two_minutes_ago)
    # Being written by a pid this host cannot see (another container sharing the store).
    foreign = store.dir / ".tmp-abc-999999998-beef.safetensors"
    foreign.write_bytes(b"partial")
    mine = store.dir / f".tmp-abc-{os.getpid()}-cafe.safetensors"  # a save in progress
    mine.write_bytes(b"partial")
    os.utime(mine, two_minutes_ago)
    unknown = store.dir / "f00d.safetensors"
    unknown.write_bytes(b"x")
    os.utime(unknown, two_minutes_ago)
    result = store.prune()
    assert result["temp_files"] == [stale.name] and result["unknown_files"] == [unknown.name]
    assert mine.exists() and foreign.exists() and not stale.exists() and not unknown.exists()


def test_corrupt_metadata_is_a_miss_not_a_crash(loaded, store, identity) -> None:
    from mlx_lm.models.cache import save_prompt_cache

    from foundry.local.mlx_codec import kv_checksum
    from foundry.local.prefix_store import FORMAT_VERSION

    prefix = TOKENS[:12]
    path = store.path_for(cache_key(identity, prefix))
    cache = _prefix_cache(loaded, prefix)
    meta = {"foundry_prefix_cache": FORMAT_VERSION, "identity": "{not json", "token_ids": "[1,"}
    save_prompt_cache(str(path), cache, {**meta, "kv_crc32": kv_checksum(cache)})
    lookup = store.load(identity, prefix)
    assert not lookup.hit and "corrupt" in lookup.reason and not path.exists()


def test_a_failed_write_saves_nothing_and_leaves_no_temp(loaded, store, identity, monkeypatch):
    import mlx_lm.models.cache as mlx_cache

    def unwritable(file_name, *args, **kwargs):
        open(file_name, "wb").close()  # mlx had created the file when it failed
        raise RuntimeError(f"[save_safetensors] Failed to open file {file_name}")

    monkeypatch.setattr(mlx_cache, "save_prompt_cache", unwritable)
    assert store.save(identity, TOKENS[:8], _prefix_cache(loaded, TOKENS[:8])) == 0
    assert list(store.dir.glob("*.safetensors")) == list(store.dir.glob(".tmp-*")) == []
    assert store.entries() == []


def test_clear_by_pattern(loaded, store, identity) -> None:
    store.save(identity, TOKENS[:8], _prefix_cache(loaded, TOKENS[:8]))
    other = PrefixIdentity({**identity.fields, "max_kv_size": 64}, model="other-model")
    store.save(other, TOKENS[:8], _prefix_cache(loaded, TOKENS[:8]))
    assert [r["model"] for r in store.clear("other-*")] == ["other-model"]
    assert [r["model"] for r in store.entries()] == ["tiny"]
    assert len(store.clear()) == 1 and store.entries() == []


def test_per_key_lock_serialises_builds(store) -> None:
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with store.lock("k"):
            inside.set()
            time.sleep(0.2)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait()
    with store.lock("k"):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]


def test_a_manifest_with_wrong_typed_fields_is_read_around(loaded, store, identity) -> None:
    prefix = TOKENS[:16]
    store.save(identity, prefix, _prefix_cache(loaded, prefix))
    key = cache_key(identity, prefix)
    manifest = json.loads(store.manifest.path.read_text())
    manifest["entries"][key].update(size_bytes="big", hits=[1], last_used_at=7)
    manifest["entries"]["other"] = "not an entry"
    store.manifest.path.write_text(json.dumps(manifest))
    # list, stats and prune all work; the damaged entry is ignored, not trusted.
    assert store.entries() == []
    assert store.stats()["entries"] == 0
    assert store.prune()["removed"] == []


def test_the_checksum_of_a_copied_view_is_that_of_its_bytes() -> None:
    # A prefix copied out of a longer cache is a strided view: it must checksum (and save)
    # like the contiguous array it stands for, not fail with a BufferError.
    from foundry.local.mlx_codec import kv_checksum
    from foundry.local.runtime import import_mlx

    mx = import_mlx()

    class Layer:
        def __init__(self, state):
            self.state = state

    full = mx.arange(2 * 8 * 3, dtype=mx.float32).reshape(1, 2, 8, 3)
    view = full[..., :4, :]
    copy = mx.array(view.tolist())
    assert kv_checksum([Layer((view, view))]) == kv_checksum([Layer((copy, copy))])
    assert kv_checksum([Layer(((view, view), view))]) != "00000000"  # nested states count
