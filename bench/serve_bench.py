"""`foundry serve` benchmark: the anthropic SDK against the real server on SmolLM2-135M.

A ~6,000-token system prompt + tools (the packaged orchestrator prompt and the workspace
tools, sent as a client sends them, with a cache_control breakpoint) and a 5-turn
conversation. Measured client-side, through the SDK's stream:
  * time to first token of requests 1-5 (request 1 is cold: an empty prefix store);
  * after a server restart (memory empty, the prefix on disk), a new conversation's TTFT;
  * a response-cache (L2) hit: the whole request, answered without the model;
  * a ~256-token reply through the server vs the same generation in-process (the server's
    overhead), alternating runs, medians;
  * peak memory.
Targets (issue #11): TTFT 2-5 and after restart >= 20x faster than cold, L2 < 50 ms,
overhead <= 10%.

Run:  FOUNDRY_HOME=/tmp/bench-home .venv/bin/python bench/serve_bench.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundry.local.model_dirs import DEFAULT_MODEL  # noqa: E402
from foundry.orchestrator.tools import tool_specs  # noqa: E402
from foundry.prompt.split import render_split  # noqa: E402
from foundry.prompt.template import load_template  # noqa: E402
from foundry.server.run import ServeOptions, open_server  # noqa: E402

QUESTIONS = [
    "Build a CLI todo app with tests. What do you read first?",
    "The project has a README and a src folder. What next?",
    "The tests fail with an import error. What do you check?",
    "The import is fixed. How do you confirm the fix?",
    "All tests pass. Summarise the work in one sentence.",
]
LONG = "Write a long, detailed story about a robot who learns to cook, in many paragraphs."


def system_and_tools() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    here = os.getcwd()
    os.chdir(tempfile.gettempdir())  # load_template(None) prefers ./orchestrator_prompt.txt
    try:
        static = render_split(load_template(None)).static
    finally:
        os.chdir(here)
    system = [{"type": "text", "text": static, "cache_control": {"type": "ephemeral"}}]
    tools = [t.to_dict() for t in tool_specs()]
    return system, tools


def stream_ttft(client: Any, **params: Any) -> tuple[float, float, Any]:
    """(time to the first content event, total time, final message) through the SDK."""
    started = time.perf_counter()
    first = None
    with client.messages.stream(**params) as stream:
        for event in stream:
            if first is None and event.type in ("content_block_start", "text", "message_delta"):
                first = time.perf_counter() - started
        message = stream.get_final_message()
    total = time.perf_counter() - started
    return (first if first is not None else total), total, message


def serve(home: Path, response_cache: bool = True):
    config = home / "bench-serve.json"
    config.write_text(json.dumps({"prefix_cache": {"dir": str(home / "bench-prefix-cache")}}))
    opened = open_server(
        ServeOptions(
            model=DEFAULT_MODEL,
            port=0,
            response_cache=response_cache,
            config=config,
            db=home / "bench-ledger.db",
        )
    )
    opened.runner.start_in_thread(timeout=600)
    return opened


def client_for(url: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=url, api_key="local", max_retries=0, timeout=900)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--turn-tokens", type=int, default=24, help="max_tokens per turn")
    args = parser.parse_args()
    home = Path(os.environ.get("FOUNDRY_HOME") or tempfile.mkdtemp(prefix="serve-bench-"))
    os.environ["FOUNDRY_HOME"] = str(home)
    store = home / "bench-prefix-cache"
    if store.exists():  # request 1 must be cold
        import shutil

        shutil.rmtree(store)
    system, tools = system_and_tools()
    common = {"model": "claude-sonnet-4-6", "system": system, "tools": tools}
    figures: dict[str, Any] = {}

    print("starting the server (loads or pulls the model)...", flush=True)
    opened = serve(home)
    client = client_for(opened.url)
    count = client.messages.count_tokens(
        messages=[{"role": "user", "content": QUESTIONS[0]}], **common
    ).input_tokens
    print(f"prompt: {count:,} tokens with the first question (system + tools + turn)")
    figures["prompt_tokens"] = count

    history: list[dict[str, Any]] = []
    turns = []
    for number, question in enumerate(QUESTIONS, 1):
        history.append({"role": "user", "content": question})
        ttft, total, message = stream_ttft(
            client, messages=history, max_tokens=args.turn_tokens, **common
        )
        text = "".join(b.text for b in message.content if b.type == "text") or "ok"
        history.append({"role": "assistant", "content": text})
        u = message.usage
        turns.append(
            {
                "turn": number,
                "ttft_ms": ttft * 1000,
                "total_ms": total * 1000,
                "cache_read": u.cache_read_input_tokens,
                "cache_write": u.cache_creation_input_tokens,
                "input": u.input_tokens,
            }
        )
        print(
            f"  request {number}: TTFT {ttft * 1000:9.1f} ms  (read {u.cache_read_input_tokens:,}"
            f", written {u.cache_creation_input_tokens:,}, prefilled {u.input_tokens:,})",
            flush=True,
        )
    cold = turns[0]["ttft_ms"]
    worst_warm = max(t["ttft_ms"] for t in turns[1:])
    figures["turns"] = turns
    figures["cold_over_worst_warm_turn"] = cold / worst_warm

    # L2: the last request again, identical: replayed without the model.
    started = time.perf_counter()
    client.messages.create(messages=history[:-1], max_tokens=args.turn_tokens, **common)
    l2_ms = (time.perf_counter() - started) * 1000
    figures["l2_ms"] = l2_ms

    # The server's overhead on a ~256-token reply: the same greedy generation through the
    # SDK and in-process on the same backend, alternating, with the response cache off.
    service = opened.runner.service
    backend = service.backend
    cache, service.response_cache = service.response_cache, None
    from foundry.server.protocol import parse_request

    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": 256, **common}
    in_process, served, tokens = [], [], []
    stream_ttft(client, **body)  # puts the prompt in memory for both sides
    for _ in range(2):
        request = parse_request(body, backend.model).request
        started = time.perf_counter()
        response = backend.complete(request)
        in_process.append(time.perf_counter() - started)
        _, total, message = stream_ttft(client, **body)
        served.append(total)
        tokens.append((response.usage.output_tokens, message.usage.output_tokens))
    service.response_cache = cache
    overhead = statistics.median(served) / statistics.median(in_process) - 1
    figures["reply_tokens"] = tokens
    figures["in_process_ms"] = [t * 1000 for t in in_process]
    figures["served_ms"] = [t * 1000 for t in served]
    figures["server_overhead"] = overhead
    opened.runner.stop()
    opened.runner.service.close()

    # A restarted server: nothing in memory, the prefix on disk.
    opened = serve(home)
    client = client_for(opened.url)
    ttft, _, message = stream_ttft(
        client,
        messages=[{"role": "user", "content": "A new conversation: what do you read first?"}],
        max_tokens=args.turn_tokens,
        **common,
    )
    figures["restart_ttft_ms"] = ttft * 1000
    figures["restart_cache_read"] = message.usage.cache_read_input_tokens
    figures["cold_over_restart"] = cold / (ttft * 1000)
    stats = opened.runner.service.cache_stats()
    opened.runner.stop()
    opened.runner.service.close()

    from foundry.local.runtime import peak_memory_mb

    figures["peak_mlx_mb"] = peak_memory_mb()
    figures["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["disk_store_bytes"] = stats["disk"].get("total_bytes")

    print()
    print(f"cold TTFT (request 1)   {cold:10.1f} ms")
    print(
        f"requests 2-5 TTFT       {min(t['ttft_ms'] for t in turns[1:]):10.1f} - "
        f"{worst_warm:.1f} ms   cold / worst = {cold / worst_warm:.1f}x  (target >= 20x)"
    )
    print(
        f"after restart TTFT      {ttft * 1000:10.1f} ms   cold / restart = "
        f"{figures['cold_over_restart']:.1f}x  (target >= 20x; "
        f"{figures['restart_cache_read']:,} tokens read from disk)"
    )
    print(f"L2 hit, whole request   {l2_ms:10.1f} ms   (target < 50 ms)")
    print(
        f"~256-token reply        served {statistics.median(served) * 1000:.0f} ms vs in-process "
        f"{statistics.median(in_process) * 1000:.0f} ms: overhead {overhead:+.1%} "
        f"(target <= 10%; output tokens {tokens})"
    )
    store_mb = (figures["disk_store_bytes"] or 0) / 1e6
    print(
        f"peak memory             mlx {figures['peak_mlx_mb']:.0f} MB, process RSS "
        f"{figures['max_rss_mb']:.0f} MB; prefix store {store_mb:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
