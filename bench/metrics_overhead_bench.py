"""What `/metrics` costs a served request: one `foundry serve` service behind two apps, one
with metrics (the /metrics route and its middleware, as `foundry serve` runs) and one
without (`create_app(service, with_metrics=False)`), the same requests sent to each in
alternating pairs (the order inside a pair random), through the anthropic SDK.

Measured:
  * a response-cache replay (no model: the fastest request, where an overhead shows most);
  * a model run (the tiny random-weight test model: the system prompt from memory, a few
    new tokens, 4 output tokens);
  * the recording calls alone (the middleware's count and timing, the TTFT bucket), and
    one scrape of /metrics.
Per pair, on minus off; reported: medians, the median difference with a bootstrap 95%
interval, and the load average (`uptime`) before and after.

Run:  FOUNDRY_HOME=/tmp/metrics-bench .venv/bin/python bench/metrics_overhead_bench.py \
          [--pairs 300] [--runs 60] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundry.server.run import ServeOptions, bind, open_server  # noqa: E402
from tests.serve_helpers import system_blocks  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def serve_thread(app: Any, sock: Any) -> Any:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server


def timed(client: Any, text: str, max_tokens: int) -> float:
    started = time.perf_counter()
    client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=max_tokens,
        system=system_blocks(),
        messages=[{"role": "user", "content": text}],
    )
    return (time.perf_counter() - started) * 1000


def pairs(on: Any, off: Any, n: int, text_of: Any, max_tokens: int) -> dict[str, Any]:
    rng = random.Random(7)
    diffs, ons, offs = [], [], []
    for i in range(n):
        text = text_of(i)
        order = [("on", on), ("off", off)]
        rng.shuffle(order)
        got = {name: timed(client, text if name == "on" else text_of(i, off=True), max_tokens)
               for name, client in order}  # fmt: skip
        ons.append(got["on"])
        offs.append(got["off"])
        diffs.append(got["on"] - got["off"])
    return summary(ons, offs, diffs)


def summary(ons: list[float], offs: list[float], diffs: list[float]) -> dict[str, Any]:
    rng = random.Random(11)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
    return {
        "pairs": len(diffs),
        "median_on_ms": round(statistics.median(ons), 3),
        "median_off_ms": round(statistics.median(offs), 3),
        "median_diff_ms": round(statistics.median(diffs), 3),
        "diff_ci95_ms": [round(medians[50], 3), round(medians[1949], 3)],
        "iqr_off_ms": round(
            statistics.quantiles(offs, n=4)[2] - statistics.quantiles(offs, n=4)[0], 3
        ),
    }


def recording_cost(service: Any) -> dict[str, Any]:
    from foundry.server.metrics import ServeMetrics

    metrics = ServeMetrics(service)
    n = 200_000
    record = timeit.timeit(lambda: metrics.record("/v1/messages", "POST", 200, 0.01), number=n)
    observe = timeit.timeit(lambda: service.stats.ttft_s.observe(0.05), number=n)
    scrape = min(timeit.repeat(metrics.exposition, number=20, repeat=5)) / 20
    return {
        "middleware_record_ns": round(record / n * 1e9),
        "ttft_bucket_ns": round(observe / n * 1e9),
        "scrape_ms": round(scrape * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300, help="replay pairs")
    parser.add_argument("--runs", type=int, default=60, help="model-run pairs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import anthropic

    from foundry.server.app import create_app

    work = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    model = build_tiny_model(work / "model")
    config = work / "config.json"
    config.write_text(json.dumps({"prefix_cache": {"dir": str(work / "prefix-cache")}}))
    load_before = os.getloadavg()
    opened = open_server(
        ServeOptions(model=str(model), backend="mlx", port=0, config=config, db=work / "ledger.db")
    )
    service = opened.runner.service
    servers = []
    clients = {}
    for name, flag in (("on", True), ("off", False)):
        sock = bind("127.0.0.1", 0)
        servers.append(serve_thread(create_app(service, with_metrics=flag), sock))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        clients[name] = anthropic.Anthropic(base_url=url, api_key="local", max_retries=0)
    try:
        for client in clients.values():  # warm: the system prompt in memory, a replay kept
            timed(client, "the same question", 4)
        replay = pairs(
            clients["on"], clients["off"], args.pairs, lambda i, off=False: "the same question", 4
        )
        runs = pairs(
            clients["on"],
            clients["off"],
            args.runs,
            lambda i, off=False: f"question {i} {'b' if off else 'a'}",
            4,
        )
        costs = recording_cost(service)
    finally:
        for server in servers:
            server.should_exit = True
        service.close()
    result = {
        "replay": replay,
        "model_run": runs,
        "recording": costs,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
