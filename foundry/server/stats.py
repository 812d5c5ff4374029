"""What the server did since it started: requests, cache hits by level, tokens reused and
prefill time saved. Shown at /cache/stats and as the summary printed on shutdown."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from typing import Any

from foundry.timestamps import utc_now
from foundry.usage import Usage

SOURCES = {"memory": "l1_hits", "store": "disk_hits"}
# Where reused prompt tokens came from, under since_start.tokens (and /metrics' source label).
REUSED_FROM = {"memory": "reused_memory", "store": "reused_disk"}
# Time to first token, in seconds: vLLM's buckets (a cold local prefill takes minutes).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


class Buckets:
    """A histogram's counts (Prometheus' `le` buckets, not cumulative here), its sum and
    count: kept with the other counts, under the same lock, and read by /metrics."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def copy(self) -> Buckets:
        other = Buckets(self.bounds)
        other.counts, other.sum, other.count = list(self.counts), self.sum, self.count
        return other


class ServeStats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_at = utc_now()
        self._lock = threading.Lock()
        self.requests = 0
        self.completed = 0
        self.errors: Counter[str] = Counter()
        self.levels: Counter[str] = Counter()  # l1_hits, disk_hits, misses, l2_hits
        self.tokens: Counter[str] = Counter()
        self.prefill_saved_ms = 0.0
        self.trims = 0
        self.ttft_ms: list[float] = []
        self.ttft_s = Buckets(TTFT_BUCKETS)

    def record_run(self, usage: Usage, source: str | None) -> None:
        with self._lock:
            self.requests += 1
            self.completed += 1
            self.levels[SOURCES.get(source or "", "misses")] += 1
            self._add(usage)
            self.tokens[REUSED_FROM.get(source or "", "reused_memory")] += usage.cache_read_tokens

    def record_replay(self, usage: Usage, saved_ms: float) -> None:
        with self._lock:
            self.requests += 1
            self.completed += 1
            self.levels["l2_hits"] += 1
            self._add(usage)
            self.tokens["replayed"] += usage.cache_read_tokens
            self.prefill_saved_ms += saved_ms

    def record_error(self, error_class: str, usage: Usage | None = None) -> None:
        with self._lock:
            self.requests += 1
            self.errors[error_class] += 1
            if usage is not None:
                self._add(usage)

    def record_trim(self) -> None:
        with self._lock:
            self.trims += 1

    def _add(self, usage: Usage) -> None:
        self.tokens["prompt"] += usage.total_input_tokens
        self.tokens["reused"] += usage.cache_read_tokens
        self.tokens["written"] += usage.cache_write_tokens
        self.tokens["prefilled"] += usage.input_tokens
        self.tokens["output"] += usage.output_tokens
        self.prefill_saved_ms += usage.prefill_saved_ms or 0.0
        if usage.ttft_ms is not None:
            self.ttft_ms.append(usage.ttft_ms)
            self.ttft_s.observe(usage.ttft_ms / 1000)

    def ttft_histogram(self) -> Buckets:
        with self._lock:
            return self.ttft_s.copy()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ran = sum(self.levels.values())
            prompt = self.tokens["prompt"]
            ttfts = sorted(self.ttft_ms)
            return {
                "started_at": self.started_at,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "requests": self.requests,
                "completed": self.completed,
                "errors": dict(self.errors),
                "l1_hits": self.levels["l1_hits"],
                "disk_hits": self.levels["disk_hits"],
                "l2_hits": self.levels["l2_hits"],
                "misses": self.levels["misses"],
                "hit_rate": (ran - self.levels["misses"]) / ran if ran else None,
                "token_hit_rate": self.tokens["reused"] / prompt if prompt else None,
                "tokens": dict(self.tokens),
                "prefill_saved_ms": round(self.prefill_saved_ms, 1),
                "ttft_ms_median": ttfts[len(ttfts) // 2] if ttfts else None,
                "context_trims": self.trims,
            }


def summary_lines(stats: dict[str, Any], cache: dict[str, Any]) -> list[str]:
    """The one-screen summary printed when the server stops."""
    tokens = stats["tokens"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats["errors"].items())) or "none"
    l1 = cache["l1"]
    l2 = cache["l2"]
    disk = cache["disk"]
    lines = [
        f"served {stats['requests']} requests in {stats['uptime_s']:.0f} s "
        f"({stats['completed']} completed; errors: {errors})",
        f"  cache hits   in memory {stats['l1_hits']}, from disk {stats['disk_hits']}, "
        f"replayed {stats['l2_hits']}, misses {stats['misses']} (hit rate "
        f"{pct(stats['hit_rate'])})",
        f"  tokens       prompt {tokens.get('prompt', 0):,}: reused {tokens.get('reused', 0):,} "
        f"({pct(stats['token_hit_rate'])}), saved to disk {tokens.get('written', 0):,}, "
        f"prefilled {tokens.get('prefilled', 0):,}; output {tokens.get('output', 0):,}",
        f"  time saved   ~{stats['prefill_saved_ms'] / 1000:,.1f} s of prefill and generation",
        f"  in memory    {len(l1['entries'])} KV caches, {l1['bytes'] / 1e6:,.0f} MB "
        f"(budget {_mb(l1.get('memory_budget_bytes'))}); responses cached "
        f"{l2.get('entries', 0) if l2.get('enabled') else 'off'}",
        f"  on disk      {disk.get('entries', 0)} saved prefixes, "
        f"{disk.get('total_bytes', 0) / 1e6:,.0f} MB in {disk.get('dir', '-')}",
    ]
    if stats["context_trims"]:
        lines.append(f"  trimmed      {stats['context_trims']} conversations to fit the window")
    return lines


def _mb(value: int | None) -> str:
    return "none" if value is None else f"{value / 1e6:,.0f} MB"
