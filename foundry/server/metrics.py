"""`GET /metrics`: what the server did and holds, in Prometheus' text format.

Names follow vLLM's and llama-server's where they mean the same thing, under `foundry_`
(Prometheus naming: units in the name, counters end in `_total`). docs/metrics.md lists
every metric.

Nothing is counted twice: the counters, the time-to-first-token histogram and the gauges
are read at scrape time from what /cache/stats reads (ServeStats, the queue, the caches),
so the two always agree. Only what /cache/stats has no use for is recorded here, by a
small ASGI middleware: HTTP responses by endpoint and status, and the end-to-end latency
of answered Messages requests. Each app has its own CollectorRegistry (tests run several
servers in one process; the global registry would mix them).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from foundry.server.stats import Buckets

if TYPE_CHECKING:
    from foundry.server.service import ServeService

PREFIX = "foundry"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# The routes' own paths; anything else is "other" (an unknown path must not mint a label).
ENDPOINTS = frozenset(
    ("/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/", "/health", "/cache/stats")
    + ("/metrics",)
)
MODEL_PATH = "/v1/models/"
# End-to-end latency, in seconds: vLLM's buckets, with a replay's milliseconds below them.
E2E_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
    20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def endpoint_of(path: str) -> str:
    if path in ENDPOINTS:
        return path
    if path.startswith(MODEL_PATH):
        return MODEL_PATH + "{model_id}"
    return "other"


class ServeMetrics:
    """One app's registry: the scrape-time collector over the service, and the HTTP
    counts the middleware records."""

    def __init__(self, service: ServeService) -> None:
        self.service = service
        self.model = service.settings.model_name
        self.registry = CollectorRegistry(auto_describe=False)
        self.responses: Counter[tuple[str, str, str]] = Counter()  # endpoint, method, status
        self._lock = threading.Lock()  # the loop's thread counts; a scrape's thread reads
        self.e2e = Buckets(E2E_BUCKETS)
        self.registry.register(_ServeCollector(self))

    def record(self, endpoint: str, method: str, status: int, elapsed_s: float | None) -> None:
        with self._lock:
            self.responses[(endpoint, method, str(status))] += 1
            if elapsed_s is not None:
                self.e2e.observe(elapsed_s)

    def response_counts(self) -> tuple[list[tuple[tuple[str, str, str], int]], Buckets]:
        with self._lock:
            return sorted(self.responses.items()), self.e2e.copy()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every response by endpoint, method and status, and times answered Messages
    requests to their last byte (pure ASGI: nothing buffered, streams stay streams)."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = endpoint_of(scope["path"])
        status = 500  # what the client gets when the app raises before answering

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                timed = endpoint == "/v1/messages" and status == 200
                elapsed = time.perf_counter() - started if timed else None
                self.metrics.record(endpoint, scope["method"], status, elapsed)
                status = 0  # recorded

        try:
            await self.app(scope, receive, sending)
        finally:
            if status:  # no last body: the app failed, or the client left mid-stream
                self.metrics.record(endpoint, scope["method"], status, None)


def _histogram(name: str, doc: str, buckets: Buckets, labels: dict[str, str]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    cumulative, total = [], 0
    for bound, count in zip([*buckets.bounds, float("inf")], buckets.counts, strict=True):
        total += count
        cumulative.append((_le(bound), total))
    family.add_metric(list(labels.values()), cumulative, buckets.sum)
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _ServeCollector:
    """Reads /cache/stats' own figures at scrape time."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # auto_describe is off: nothing is collected at registration

    def collect(self) -> Iterator[Metric]:
        service = self.metrics.service
        stats = service.cache_stats()
        since = stats["since_start"]
        tokens = since["tokens"]
        model = {"model_name": self.metrics.model}
        names = list(model)

        def counter(name: str, doc: str, value: float, **labels: str) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[*names, *labels])
            family.add_metric([*model.values(), *labels.values()], value)
            return family

        def labelled(
            name: str, doc: str, label: str, values: dict[str, float]
        ) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[*names, label])
            for key, value in values.items():
                family.add_metric([*model.values(), key], value)
            return family

        def gauge(name: str, doc: str, value: float | None) -> list[GaugeMetricFamily]:
            """One gauge; none where the server has no such figure (a store turned off)."""
            if value is None:
                return []
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=names)
            family.add_metric(list(model.values()), value)
            return [family]

        outcomes = {"completed": since["completed"], **since["errors"]}
        yield labelled(
            "requests",
            "Messages requests that reached the model's queue or the response cache, by "
            "outcome: completed, or the error class (context_too_long, rate_limit, overloaded, "
            "cancelled, local_model_error, server_error)",
            "outcome",
            outcomes,
        )
        yield labelled(
            "prompt_tokens",
            "Prompt tokens by where they came from: the in-memory KV cache (memory), the "
            "prefix store on disk (disk), a replayed response (response_cache), or computed "
            "now (prefilled: what /cache/stats calls prefilled plus what it saved to disk)",
            "source",
            {
                "memory": tokens.get("reused_memory", 0),
                "disk": tokens.get("reused_disk", 0),
                "response_cache": tokens.get("replayed", 0),
                "prefilled": tokens.get("prefilled", 0) + tokens.get("written", 0),
            },
        )
        yield counter(
            "prompt_tokens_saved_to_disk",
            "Prompt tokens prefilled and saved to the prefix store (cache_creation_input_tokens)",
            tokens.get("written", 0),
        )
        yield counter(
            "generation_tokens", "Output tokens generated or replayed", tokens.get("output", 0)
        )
        ran = tokens.get("prompt", 0) - tokens.get("replayed", 0)
        yield counter(
            "prefix_cache_queries",
            "Prompt tokens of requests that ran the model, all looked up in the prefix caches "
            "(tokens, as vLLM counts them)",
            ran,
        )
        yield counter(
            "prefix_cache_hits",
            "Of those, tokens reused from memory or disk",
            tokens.get("reused_memory", 0) + tokens.get("reused_disk", 0),
        )
        yield labelled(
            "cache_hits",
            "Requests served by a cache level: memory (a KV cache in memory), disk (a prefix "
            "from the store), response (a replayed response)",
            "level",
            {"memory": since["l1_hits"], "disk": since["disk_hits"], "response": since["l2_hits"]},
        )
        yield counter(
            "cache_misses", "Requests that ran the model with no cached prefix", since["misses"]
        )
        yield counter(
            "prefill_saved_seconds",
            "Estimated prefill (and, for replays, generation) time the caches saved",
            since["prefill_saved_ms"] / 1000,
        )
        yield counter(
            "context_trims", "Conversations trimmed to fit the window", since["context_trims"]
        )
        yield _histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time to the first output token: from the model starting on the request (queue "
            "wait not included) or, for a replay, from its arrival",
            service.stats.ttft_histogram(),
            model,
        )
        queue = stats["queue"]
        yield from gauge(
            "num_requests_running", "Requests the model is running (0 or 1)", int(queue["running"])
        )
        yield from gauge("num_requests_waiting", "Requests waiting for the model", queue["waiting"])
        yield from gauge(
            "queue_max_waiting",
            "Waiting requests past which a request gets 429",
            queue["max_waiting"],
        )
        yield counter(
            "queue_rejections", "Requests refused with 429 (queue full)", queue["rejected"]
        )
        memory = stats["memory"]
        budget = memory.get("budget_bytes")
        used = memory.get("kv_bytes_in_memory", 0)
        yield from gauge("kv_cache_memory_bytes", "Bytes of KV caches held in memory", used)
        yield from gauge(
            "kv_cache_memory_budget_bytes", "The memory guard's budget for them", budget
        )
        yield from gauge(
            "kv_cache_usage_ratio",
            "KV cache bytes in memory over the budget (0-1)",
            used / budget if budget else None,
        )
        yield from gauge(
            "kv_cache_memory_entries", "KV caches held in memory", len(stats["l1"]["entries"])
        )
        disk = stats["disk"]
        yield from gauge(
            "prefix_store_bytes", "Bytes of saved prefixes on disk", disk.get("total_bytes")
        )
        yield from gauge("prefix_store_entries", "Saved prefixes on disk", disk.get("entries"))
        yield from gauge("prefix_store_max_bytes", "The store's size limit", disk.get("max_bytes"))
        l2 = stats["l2"]
        yield from gauge("response_cache_entries", "Responses held for replay", l2.get("entries"))
        yield from gauge(
            "response_cache_bytes", "Bytes of responses held for replay", l2.get("bytes")
        )
        responses = CounterMetricFamily(
            f"{PREFIX}_http_requests",
            "HTTP responses by endpoint, method and status (every route, errors included)",
            labels=["endpoint", "method", "status"],
        )
        counts, e2e = self.metrics.response_counts()
        for (endpoint, method, status), count in counts:
            responses.add_metric([endpoint, method, status], count)
        yield responses
        yield _histogram(
            f"{PREFIX}_e2e_request_latency_seconds",
            "Messages requests answered (status 200), from the request's arrival to the last "
            "byte of the response (a stream's included)",
            e2e,
            model,
        )
