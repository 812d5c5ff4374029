"""The on-disk prefix-cache store: saved KV caches keyed by model identity + exact token ids.

A file is used only when its stored identity and token ids equal the request's; anything
else (other model, other tokens, truncated or corrupt file, over the memory budget) is a
miss with the reason logged, never a crash and never a wrong answer. Files are written to a
temp name and renamed, computed under a per-key lock, and never modified after that.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from foundry.config import FoundryConfig, prefix_cache_dir
from foundry.errors import CacheStoreError
from foundry.local.manifest import (
    Manifest,
    clean_temps,
    key_path,
    last_used_epoch,
    locked_file,
    regular_size,
    remove_file,
    unknown_files,
)
from foundry.local.mlx_codec import MlxCodec

log = logging.getLogger(__name__)
# 2: the file carries a CRC-32 of its KV data, checked on every load (files of version 1
# have none, so they are misses and are recomputed).
FORMAT_VERSION = "2"


@dataclass(frozen=True)
class PrefixIdentity:
    """Everything that shapes the KV values of a prefix, and its digest."""

    fields: dict[str, Any]
    model: str  # a display name for listings; not part of the identity

    @functools.cached_property  # asked once per block key: hundreds of times a request
    def digest(self) -> str:
        canonical = json.dumps(self.fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Lookup:
    key: str
    cache: Any  # the loaded payload on a hit (mlx: a private copy of the KV cache), else None
    reason: str  # why it missed, or "hit"
    load_ms: float = 0.0
    size: int = 0
    prefill_ms: float | None = None  # what computing this prefix cost when it was saved

    @property
    def hit(self) -> bool:
        return self.cache is not None


def tokens_digest(tokens: list[int]) -> str:
    return hashlib.sha256(json.dumps(tokens, separators=(",", ":")).encode()).hexdigest()


def cache_key(identity: PrefixIdentity, tokens: list[int]) -> str:
    return hashlib.sha256(f"{identity.digest}:{tokens_digest(tokens)}".encode()).hexdigest()[:40]


def prefix_keys(identity: PrefixIdentity, tokens: list[int]) -> list[str]:
    """cache_key of tokens[:1], tokens[:2], ... tokens[:n], from one encoding of `tokens`
    (json.dumps of each prefix again made a lookup of 255 lengths cost ~14 ms)."""
    texts = [str(t) for t in tokens]
    ends, at = [], 1  # where each prefix's last id ends in "[a,b,c"
    for text in texts:
        at += len(text)
        ends.append(at)
        at += 1  # the comma
    joined = "[" + ",".join(texts)
    digest = identity.digest
    keys = []
    for end in ends:
        of_tokens = hashlib.sha256((joined[:end] + "]").encode()).hexdigest()
        keys.append(hashlib.sha256(f"{digest}:{of_tokens}".encode()).hexdigest()[:40])
    return keys


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class PrefixCacheStore:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 4 * 1024**3,
        ttl_days: float = 30.0,
        memory_budget_mb: int = 4096,
        create: bool = True,
        codec: Any = None,
    ) -> None:
        self.dir = Path(directory)
        self.codec = codec or MlxCodec()
        self.max_bytes = max_bytes
        self.ttl_s = ttl_days * 86400
        self.memory_budget_bytes = memory_budget_mb * 1024 * 1024
        try:
            # A backend creates the store up front, so an unwritable dir fails before any
            # model call; listing a store that does not exist yet creates nothing.
            if create:
                (self.dir / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheStoreError(
                f"cannot create the prefix-cache dir {self.dir}: {exc.strerror}",
                "set prefix_cache.dir in cache_config.json to a writable directory",
            ) from None
        self.manifest = Manifest(self.dir)

    @classmethod
    def from_config(
        cls, config: FoundryConfig, *, create: bool = True, codec: Any = None
    ) -> PrefixCacheStore:
        pc = config.prefix_cache
        return cls(
            prefix_cache_dir(config),
            max_bytes=pc.max_bytes,
            ttl_days=pc.ttl_days,
            memory_budget_mb=pc.memory_budget_mb,
            create=create,
            codec=codec,
        )

    def path_for(self, key: str) -> Path:
        return key_path(self.dir, key)  # CacheStoreError for a key that is not a name

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive per-key lock: one process computes a given prefix at a time."""
        locks = self.dir / "locks"
        if locks.is_symlink():  # lock files would be created wherever it points
            raise CacheStoreError(f"{locks} is a link", "remove it; foundry creates a new one")
        with locked_file(key_path(locks, key, ".lock")):
            yield

    # -- lookup ------------------------------------------------------------------------------

    def has(self, identity: PrefixIdentity, tokens: list[int]) -> bool:
        """Whether a file for exactly these tokens exists (cheap: no read, no verification)."""
        return regular_size(self.path_for(cache_key(identity, tokens))) is not None

    def load(self, identity: PrefixIdentity, tokens: list[int], *, record: bool = True) -> Lookup:
        """The verified payload of exactly `tokens`; a hit is counted in the manifest unless
        `record` is off (a caller loading many entries counts them at once: record_hits)."""
        key = cache_key(identity, tokens)
        lookup = self._load(key, identity, tokens)
        if lookup.hit:
            if record:
                self.manifest.touch(key, self._entry(identity, tokens, lookup.size))
        else:
            log.info(
                "prefix cache miss for %s (%d tokens): %s",
                identity.model,
                len(tokens),
                lookup.reason,
            )
        return lookup

    def record_hits(self, hits: list[tuple[str, PrefixIdentity, list[int], int]]) -> None:
        """Count a hit on each (key, identity, tokens, size) in one manifest write."""
        self.manifest.touch_many({k: self._entry(i, t, n) for k, i, t, n in hits})

    def _load(self, key: str, identity: PrefixIdentity, tokens: list[int]) -> Lookup:
        path = self.path_for(key)
        size = regular_size(path)
        if size is None:
            # A link is never read through: it could point at any file (or a huge one).
            if os.path.lexists(path):
                return Lookup(key, None, "its file is a link or not a regular file (not read)")
            return Lookup(key, None, self._why_absent(identity, tokens))
        if size > self.memory_budget_bytes:
            budget_mb = self.memory_budget_bytes // (1024 * 1024)
            return Lookup(
                key,
                None,
                f"saved prefix is {size / 1e6:.0f} MB, over prefix_cache.memory_budget_mb "
                f"({budget_mb} MB)",
            )
        started = time.perf_counter()
        try:
            cache, meta = self.codec.read(path)
            if meta.get("foundry_prefix_cache") != FORMAT_VERSION:
                return Lookup(key, None, "saved prefix has an unknown format version")
            if self.codec.checksum(cache) != meta.get("kv_crc32"):
                # Flipped bits load fine and then turn every logit into NaN: never a hit.
                self._move_aside(key, "its KV data does not match its checksum")
                return Lookup(key, None, "corrupt: the saved prefix's checksum did not match")
            stored_identity = json.loads(meta.get("identity", "{}"))
            stored_tokens = json.loads(meta.get("token_ids", "[]"))
            if not isinstance(stored_identity, dict):
                raise ValueError("identity is not an object")
        except Exception as exc:  # truncated/corrupt files raise from a codec in many ways
            self._drop(key, f"unreadable ({type(exc).__name__}: {exc})")
            return Lookup(key, None, f"saved prefix file was corrupt and was removed ({exc})")
        if stored_identity != identity.fields:
            changed = ", ".join(_differences(stored_identity, identity.fields))
            return Lookup(key, None, f"model identity differs ({changed})")
        if stored_tokens != tokens:
            return Lookup(key, None, "stored token ids differ from the prompt's prefix")
        if not self.codec.holds(cache, len(tokens)):
            self._drop(key, "KV length does not match its token ids")
            return Lookup(key, None, "saved prefix was inconsistent and was removed")
        try:
            prefill_ms: float | None = float(meta["prefill_ms"])
        except (KeyError, ValueError):
            prefill_ms = None
        load_ms = (time.perf_counter() - started) * 1000
        return Lookup(key, cache, "hit", load_ms, size, prefill_ms)

    def _why_absent(self, identity: PrefixIdentity, tokens: list[int]) -> str:
        digest = tokens_digest(tokens)
        for entry in self.manifest.entries().values():
            if entry.get("model") != identity.model:
                continue
            if entry.get("tokens_digest") == digest:
                changed = ", ".join(_differences(entry.get("identity", {}), identity.fields))
                return f"a saved prefix exists for other model settings ({changed})"
        return "no saved prefix for this model and prefix"

    # -- save --------------------------------------------------------------------------------

    def save(
        self,
        identity: PrefixIdentity,
        tokens: list[int],
        cache: Any,
        prefill_ms: float | None = None,
    ) -> int:
        """Save `cache` (exactly `tokens` long) under its key; returns bytes written, 0 if not.
        `prefill_ms`, the measured cost of computing it, is what a later hit saves."""
        return self.save_many([(identity, tokens, cache, prefill_ms)])

    def save_many(self, items: list[tuple[PrefixIdentity, list[int], Any, float | None]]) -> int:
        """Save each (identity, tokens, payload, prefill_ms), then record them all in one
        manifest write and apply the limits once, sparing what was just saved; returns the
        bytes written (a payload that cannot be saved is skipped, and logged)."""
        clean_temps(self.dir)
        saved: dict[str, dict[str, Any]] = {}
        for identity, tokens, cache, prefill_ms in items:
            size = self._write(identity, tokens, cache, prefill_ms)
            if size:
                saved[cache_key(identity, tokens)] = self._entry(identity, tokens, size)
        if saved:
            self.manifest.add_many(saved)
            self.enforce_limits(keep=set(saved))
        return sum(entry["size_bytes"] for entry in saved.values())

    def _write(
        self, identity: PrefixIdentity, tokens: list[int], cache: Any, prefill_ms: float | None
    ) -> int:
        key = cache_key(identity, tokens)
        estimate = self.codec.nbytes(cache)
        if estimate > min(self.memory_budget_bytes, self.max_bytes):
            log.info("prefix cache not saved: %d bytes is over the store's limits", estimate)
            return 0
        temp = self.dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        metadata = {
            "foundry_prefix_cache": FORMAT_VERSION,
            "identity": json.dumps(identity.fields, sort_keys=True),
            "identity_digest": identity.digest,
            "token_ids": json.dumps(tokens, separators=(",", ":")),
            "n_tokens": str(len(tokens)),
        }
        if prefill_ms is not None:
            metadata["prefill_ms"] = f"{prefill_ms:.3f}"
        try:
            metadata["kv_crc32"] = self.codec.checksum(cache)
            self.codec.write(temp, cache, metadata)
            size = temp.stat().st_size
            os.replace(temp, self.path_for(key))
        except Exception as exc:  # mlx reports file errors as RuntimeError; a save is optional
            temp.unlink(missing_ok=True)
            log.warning("prefix cache not saved: %s", exc)
            return 0
        return size

    @staticmethod
    def _entry(identity: PrefixIdentity, tokens: list[int], size: int) -> dict[str, Any]:
        return {
            "model": identity.model,
            "identity_digest": identity.digest,
            "identity": identity.fields,
            "tokens_digest": tokens_digest(tokens),
            "n_tokens": len(tokens),
            "size_bytes": size,
        }

    # -- maintenance -------------------------------------------------------------------------

    def _move_aside(self, key: str, reason: str) -> None:
        """Keep a corrupt file for inspection (`<key>.corrupt`), out of the store's way."""
        log.warning("moving saved prefix %s aside: %s", key, reason)
        path = self.path_for(key)
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".corrupt"))
        self.manifest.remove([key])

    def _drop(self, key: str, reason: str) -> None:
        log.warning("dropping saved prefix %s: %s", key, reason)
        remove_file(self.path_for(key))
        self.manifest.remove([key])

    def entries(self) -> list[dict[str, Any]]:
        """Manifest entries, reconciled with the files actually on disk (a link is none)."""
        entries = self.manifest.entries()  # only keys that are names
        orphans = [k for k in entries if regular_size(self.path_for(k)) is None]
        if orphans:
            self.manifest.remove(orphans)
        rows = [dict(v, key=k) for k, v in entries.items() if k not in orphans]
        return sorted(rows, key=lambda r: r.get("last_used_at", ""), reverse=True)

    def stats(self) -> dict[str, Any]:
        rows = self.entries()
        return {
            "dir": str(self.dir),
            "entries": len(rows),
            "total_bytes": sum(r.get("size_bytes", 0) for r in rows),
            "max_bytes": self.max_bytes,
            "ttl_days": self.ttl_s / 86400,
            "memory_budget_mb": self.memory_budget_bytes // (1024 * 1024),
            "hits": sum(r.get("hits", 0) for r in rows),
            "tokens_stored": sum(r.get("n_tokens", 0) for r in rows),
        }

    def clear(self, pattern: str | None = None) -> list[dict[str, Any]]:
        """Remove entries whose key or model name matches the glob PATTERN (all without one)."""
        chosen = [
            r
            for r in self.entries()
            if pattern is None
            or fnmatch(r["key"], pattern)
            or r["key"].startswith(pattern)
            or fnmatch(str(r.get("model", "")), pattern)
        ]
        for row in chosen:
            remove_file(self.path_for(row["key"]))
        self.manifest.remove([r["key"] for r in chosen])
        return chosen

    def enforce_limits(
        self, *, keep: set[str] | frozenset[str] = frozenset(), now: float | None = None
    ) -> list[dict]:
        """Drop entries past the TTL, then least recently used ones until under max_bytes."""
        now = time.time() if now is None else now
        rows = self.entries()
        expired = [
            r
            for r in rows
            if now - last_used_epoch(r.get("last_used_at"), now) > self.ttl_s
            and r["key"] not in keep
        ]
        live = sorted(
            (r for r in rows if r not in expired), key=lambda r: r.get("last_used_at", "")
        )
        total = sum(r.get("size_bytes", 0) for r in live)
        evicted = []
        for row in live:
            if total <= self.max_bytes:
                break
            if row["key"] in keep:
                continue
            evicted.append(row)
            total -= row.get("size_bytes", 0)
        removed = [dict(r, reason="expired") for r in expired] + [
            dict(r, reason="over max_bytes") for r in evicted
        ]
        for row in removed:
            remove_file(self.path_for(row["key"]))
        self.manifest.remove([r["key"] for r in removed])
        return removed

    def prune(self, now: float | None = None) -> dict[str, Any]:
        """TTL + LRU limits, stale temp files, files the manifest does not know, and the
        manifest's entries whose key is not a name (skipped_keys: dropped, never a path)."""
        skipped = self.manifest.drop_invalid()
        removed = self.enforce_limits(now=now)
        unknown = [
            p for p in unknown_files(self.dir, set(self.manifest.entries())) if remove_file(p)
        ]
        return {
            "removed": removed,
            "temp_files": clean_temps(self.dir),
            "unknown_files": [p.name for p in unknown],
            "skipped_keys": skipped,
        }


__all__ = ["PrefixCacheStore", "PrefixIdentity", "Lookup", "cache_key"]
