"""/cache/stats: what a served model's caches hold and did, read from the service's parts
(its stats, the backend's in-memory caches, the response cache, the prefix store, the queue).
The metrics endpoint reads the same figures, so the two always agree."""

from __future__ import annotations

from typing import Any


def cache_stats(service: Any, *, paths: bool = False) -> dict[str, Any]:
    """What the caches hold and did. The store's directory only with `paths` (for the
    operator's summary): a client has no business knowing the server's filesystem."""
    store = getattr(service.backend, "_store", None)
    disk = store.stats() if store is not None else {"enabled": False}
    if not paths:
        disk.pop("dir", None)
    if service.disk_budget is not None:
        disk["writes"] = service.disk_budget.stats()
    l1 = service.backend.cache_state()
    engine_memory = l1.pop("engine_memory", {})  # mlx's or llama.cpp's own figures
    return {
        "model": service.settings.model_name,
        "context_window": service.window,
        "since_start": service.stats.snapshot(),
        "l1": l1,
        "l2": service.response_cache.stats() if service.response_cache else {"enabled": False},
        "disk": disk,
        "memory": {
            "kv_bytes_in_memory": l1["bytes"],
            "budget_bytes": l1["memory_budget_bytes"],
            **engine_memory,
        },
        "queue": {
            "running": service.queue.busy,
            "waiting": service.queue.waiting,
            "max_waiting": service.queue.max_waiting,
            "rejected": service.queue.rejected,
        },
    }
