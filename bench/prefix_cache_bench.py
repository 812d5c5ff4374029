"""Prefix-cache benchmark for the MLX backend on SmolLM2-135M (pulled with `foundry models pull`).

Measures, with the packaged orchestrator prompt and a short task (the scout phase's first
request, as a build sends it):
  * time to first token cold (empty store: prefill everything, save the prefix) vs warm
    (a new backend instance loads the saved prefix and prefills only the dynamic tokens);
  * the physical floor: prefilling only the dynamic tokens onto a prefix already in memory;
  * per-turn time of a 5-turn conversation with and without in-memory reuse;
  * peak memory.
Run:  FOUNDRY_HOME=/tmp/bench-home .venv/bin/python bench/prefix_cache_bench.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundry.backends.base import Message, ModelRequest  # noqa: E402
from foundry.config import FoundryConfig  # noqa: E402
from foundry.local.model_dirs import DEFAULT_MODEL, resolve_model  # noqa: E402
from foundry.local.pull import pull  # noqa: E402
from foundry.orchestrator.phases import BY_NAME, first_user_turn  # noqa: E402
from foundry.orchestrator.tools import tool_specs  # noqa: E402
from foundry.prompt.split import render_split  # noqa: E402
from foundry.prompt.template import TaskConfig, load_template  # noqa: E402

TASK = "Build a CLI todo app with tests"
# Stands in for tool results in turns 2-5 of the conversation benchmark.
TOOL_RESULT = (
    "When a phase starts, read the previous phase's artifact first. Prefer small, verifiable "
    "steps: write one module, run its tests, then continue. Never invent file contents you "
    "have not read; use read_file and list_files to look. Keep the build log current. "
)


def static_and_dynamic() -> tuple[str, str]:
    """The packaged prompt, split as a build of TASK splits it."""
    here = os.getcwd()
    os.chdir(tempfile.gettempdir())  # load_template(None) prefers ./orchestrator_prompt.txt
    try:
        template = load_template(None)
    finally:
        os.chdir(here)
    split = render_split(template, TaskConfig("todo", TASK, "/tmp/bench-todo"))
    return split.static, split.dynamic


def first_turn(dynamic: str) -> list[Message]:
    """The scout phase's first user turn, exactly as a build sends it."""
    text = first_user_turn(dynamic, BY_NAME["scout"], [])
    return [Message("user", [{"type": "text", "text": text}])]


def request(static: str, messages: list[Message], max_tokens: int) -> ModelRequest:
    return ModelRequest(
        model=DEFAULT_MODEL,
        system=static,
        tools=tool_specs(),
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.0,
    )


def backend(config: FoundryConfig, reuse: bool = True):
    from foundry.backends.mlx import MLXBackend

    b = MLXBackend(config, DEFAULT_MODEL, reuse_conversation=reuse)
    b._ensure_loaded()
    return b


def conversation(config, static, dynamic, reuse: bool, turns: int = 5) -> list[dict]:
    b = backend(config, reuse)
    messages = first_turn(dynamic)
    rows = []
    for turn in range(turns):
        response = b.complete(request(static, messages, 24))
        u = response.usage
        rows.append(
            {
                "turn": turn + 1,
                "ttft_ms": u.ttft_ms,
                "duration_ms": u.duration_ms,
                "prefilled": u.input_tokens + u.cache_write_5m_tokens,
                "reused": u.cache_read_tokens,
            }
        )
        reply = response.text or "Listing the files."
        messages = messages + [
            Message("assistant", [{"type": "text", "text": reply}]),
            Message("user", [{"type": "text", "text": f"Result {turn + 1}: " + TOOL_RESULT[:300]}]),
        ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    from foundry.local.engine import prefill, sample
    from foundry.local.runtime import peak_memory_mb, preload_openblas

    print(f"OpenBLAS: {preload_openblas() or 'not found'}")
    try:
        resolve_model(DEFAULT_MODEL)
    except Exception:
        print("pulling smollm2-135m ...")
        pull(DEFAULT_MODEL, progress=lambda m: print("  " + m))
    static, dynamic = static_and_dynamic()
    store_dir = Path(tempfile.mkdtemp(prefix="foundry-bench-store-"))
    config = FoundryConfig.model_validate({"prefix_cache": {"dir": str(store_dir)}})

    warmup = backend(FoundryConfig.model_validate({"prefix_cache": {"enabled": False}}))
    warmup.complete(request("Hi.", [Message("user", [{"type": "text", "text": "Hi"}])], 2))

    cold_backend = backend(config)
    cold = cold_backend.complete(request(static, first_turn(dynamic), 1)).usage
    rendered = cold_backend._renderer.render(request(static, first_turn(dynamic), 1))
    n_prefix, n_total = len(rendered.prefix), len(rendered.tokens)
    warm_runs = []
    for _ in range(3):
        warm_backend = backend(config)
        warm_runs.append(warm_backend.complete(request(static, first_turn(dynamic), 1)).usage)
    warm = sorted(warm_runs, key=lambda u: u.ttft_ms)[1]
    load_ms = warm_backend.last_cache_event.get("load_ms")

    floors = []
    store = warm_backend._store
    for _ in range(3):
        cache = store.load(warm_backend._identity, rendered.prefix).cache
        started = time.perf_counter()
        sample(prefill(warm_backend._loaded.model, cache, rendered.tokens[n_prefix:]), 0.0)
        floors.append((time.perf_counter() - started) * 1000)
    floor = statistics.median(floors)

    with_reuse = conversation(config, static, dynamic, reuse=True)
    without_reuse = conversation(config, static, dynamic, reuse=False)
    figures = {
        "prefix_tokens": n_prefix,
        "dynamic_tokens": n_total - n_prefix,
        "cold_ttft_ms": cold.ttft_ms,
        "cold_prefill_tokens_per_s": cold.prefill_tokens_per_s,
        "warm_ttft_ms": warm.ttft_ms,
        "warm_load_ms": load_ms,
        "floor_dynamic_prefill_ms": floor,
        "cold_over_warm": cold.ttft_ms / warm.ttft_ms,
        "warm_over_floor": warm.ttft_ms / floor,
        "prefix_file_mb": sum(p.stat().st_size for p in store_dir.glob("*.safetensors")) / 1e6,
        "five_turns_with_reuse": with_reuse,
        "five_turns_without_reuse": without_reuse,
        "peak_memory_mb": peak_memory_mb(),
    }
    print(f"\npackaged prompt: prefix {n_prefix} tokens + dynamic {n_total - n_prefix} tokens")
    print(f"cold TTFT   {cold.ttft_ms:9.1f} ms  (prefill {cold.prefill_tokens_per_s:.0f} tok/s)")
    print(f"warm TTFT   {warm.ttft_ms:9.1f} ms  (saved prefix load {load_ms:.1f} ms)")
    print(f"floor       {floor:9.1f} ms  (dynamic tokens onto an in-memory prefix)")
    print(f"cold/warm   {figures['cold_over_warm']:9.1f}x   (target >= 40x)")
    print(f"warm/floor  {figures['warm_over_floor']:9.2f}x   (target <= 1.5x)")
    print("\n5-turn conversation, per turn:  with reuse | without in-memory reuse")
    for a, b in zip(with_reuse, without_reuse, strict=True):
        print(
            f"  turn {a['turn']}: {a['duration_ms']:7.0f} ms ({a['prefilled']:4d} prefilled)"
            f" | {b['duration_ms']:7.0f} ms ({b['prefilled']:4d} prefilled)"
        )
    print(
        f"\npeak memory {figures['peak_memory_mb']:.0f} MB; prefix file "
        f"{figures['prefix_file_mb']:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
