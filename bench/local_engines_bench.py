"""Local engines side by side on SmolLM2-135M with the packaged prompt (issue 16):
  mlx       foundry's mlx backend (fp32 weights + OpenBLAS on Linux)
  raw       llama-cpp-python alone, without foundry (the Q4_1 GGUF, f16 KV, all cores)
  llamacpp  foundry's llamacpp backend (the same GGUF through foundry)

The same token ids for all three: the scout phase's first request as a build renders it
(~6.2k tokens: the static prefix + the dynamic part). Every figure is measured in a fresh
process, and the engines take turns within each round:
  * cold prefill: prompt tokens / time to first token, nothing saved (foundry also saves the
    static prefix on the way, as a build does);
  * warm TTFT: a new process restores the saved static prefix and prefills the rest;
  * decode: tokens per second over the reply at ~6.2k context, in cold and warm runs
    (greedy, constraints off, so every engine runs the same plain decode steps; foundry
    stops at an end token, raw runs all --decode steps).
Goals: llamacpp within 0.9x of raw on every figure; against mlx at least 2.4x (prefill),
3x (warm TTFT) and 4x (decode).

With --busy, every measurement runs on a shared machine, as a user's does beside a second
build or `foundry serve`: one CPU hog (a busy loop, as a compile would be) and a second
foundry llama.cpp process prefilling and decoding without pause (registered in foundry's
share of the cores, as a second foundry process is) run for the whole measurement.
--busy both runs each round quiet and then busy, so the two tables come from one run.

Run:  FOUNDRY_HOME=/tmp/bench-home nice -n 19 .venv/bin/python bench/local_engines_bench.py
        [--engines mlx,raw,llamacpp] [--rounds 2] [--decode 64] [--threads N] [--json OUT]
        [--busy [only|both]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.prefix_cache_bench import first_turn, request, static_and_dynamic  # noqa: E402
from foundry.backends.llamacpp import LlamaCppBackend  # noqa: E402
from foundry.backends.mlx import MLXBackend  # noqa: E402
from foundry.config import FoundryConfig  # noqa: E402
from foundry.local.model_dirs import DEFAULT_MODEL  # noqa: E402

ENGINES = ("mlx", "raw", "llamacpp")
FIGURES = ("cold_prefill_tok_s", "warm_ttft_s", "decode_tok_s")

# The load of --busy: a core-sized busy loop, and a second foundry llama.cpp engine working
# without pause (prefill 512 tokens, decode 64, again), each in its own process.
_HOG = "while True:\n    pass\n"
_SECOND_ENGINE = r"""
import sys
from pathlib import Path
from foundry.local.llamacpp_engine import LlamaCppModel
engine = LlamaCppModel(Path(sys.argv[1]), "busy", n_ctx=1024)
tokens = [(i * 7919) % 40000 + 100 for i in range(512)]
while True:
    engine.threads.fit()
    engine.feed(tokens)
    for token in tokens[:64]:
        engine.feed([token])
    engine.trim(0)
"""


class Load:
    """The --busy load, started before a measurement and stopped after it."""

    def __init__(self) -> None:
        from foundry.local.llamacpp_models import find_gguf

        self.model = str(find_gguf(DEFAULT_MODEL))
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Load:
        root = Path(__file__).resolve().parent.parent
        self.procs = [
            subprocess.Popen([sys.executable, "-c", _HOG]),
            subprocess.Popen([sys.executable, "-c", _SECOND_ENGINE, self.model], cwd=root),
        ]
        time.sleep(3.0)  # the second engine loaded and working
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def prompt_request(decode: int):
    static, dynamic = static_and_dynamic()
    return request(static, first_turn(dynamic), decode)


def bench_config(store: Path, decode: int, threads: int | None = None) -> FoundryConfig:
    engine = {"max_tokens": max(decode, 1), "constrained_tools": False}
    return FoundryConfig.model_validate(
        {
            "prefix_cache": {"dir": str(store)},
            "mlx": engine,
            "llamacpp": {**engine, "threads": threads},
        }
    )


# -- workers: one measurement each, in their own process ---------------------------------------


def foundry_worker(
    engine: str, phase: str, store: Path, decode: int, threads: int | None
) -> dict[str, Any]:
    Backend = MLXBackend if engine == "mlx" else LlamaCppBackend
    backend = Backend(bench_config(store, decode, threads), DEFAULT_MODEL)
    backend.load()
    usage = backend.complete(prompt_request(decode)).usage
    prompt = usage.total_input_tokens
    ttft_s = (usage.ttft_ms or 0.0) / 1000
    row = {
        "prompt_tokens": prompt,
        "reused": usage.cache_read_tokens,
        "ttft_s": ttft_s,
        "decode_tok_s": usage.generation_tokens_per_s,
        "generated": usage.output_tokens,
        "source": backend.last_cache_event.get("source"),
    }
    if phase == "cold":
        row["cold_prefill_tok_s"] = prompt / ttft_s
    else:
        row["warm_ttft_s"] = ttft_s
    return row


def raw_worker(
    phase: str, state_file: Path, ids_file: Path, decode: int, threads: int | None
) -> dict[str, Any]:
    """llama-cpp-python's own API: Llama.eval, the last position's logits, argmax, and the
    sequence state saved with llama_state_seq_get_data."""
    import ctypes

    import llama_cpp
    import numpy as np

    from foundry.local.llamacpp_models import find_gguf

    spec = json.loads(ids_file.read_text())
    tokens, n_prefix = spec["tokens"], spec["prefix"]
    threads = threads or len(os.sched_getaffinity(0))
    llm = llama_cpp.Llama(
        str(find_gguf(DEFAULT_MODEL)),
        n_ctx=0,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def last_logits() -> Any:
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(n_vocab,))

    def decode_rate(token: int) -> float | None:
        """Greedy steps after the first token, timed as foundry times them (the first token
        came with the prefill); end tokens are not special here."""
        started = time.perf_counter()
        for _ in range(decode - 1):
            llm.eval([token])
            token = int(np.argmax(last_logits()))
        return decode / (time.perf_counter() - started) if decode > 1 else None

    started = time.perf_counter()
    if phase == "warm":
        data = bytearray(state_file.read_bytes())
        buffer = (ctypes.c_uint8 * len(data)).from_buffer(data)
        assert llama_cpp.llama_state_seq_set_data(llm.ctx, buffer, len(data), 0) == len(data)
        llm.n_tokens = n_prefix
        llm.eval(tokens[n_prefix:])
        token = int(np.argmax(last_logits()))
        ttft_s = time.perf_counter() - started
        return {"warm_ttft_s": ttft_s, "reused": n_prefix, "decode_tok_s": decode_rate(token)}
    llm.eval(tokens)
    token = int(np.argmax(last_logits()))
    ttft_s = time.perf_counter() - started
    rate = decode_rate(token)
    llm._ctx.kv_cache_seq_rm(0, n_prefix, -1)  # keep the static prefix, save it
    saved = time.perf_counter()
    size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(llm.ctx, buffer, size, 0)
    state_file.write_bytes(bytes(buffer)[:written])
    return {
        "prompt_tokens": len(tokens),
        "ttft_s": ttft_s,
        "cold_prefill_tok_s": len(tokens) / ttft_s,
        "decode_tok_s": rate,
        "generated": decode,
        "state_mb": written / 1e6,
        "save_ms": (time.perf_counter() - saved) * 1000,
    }


def worker(args: argparse.Namespace) -> int:
    work = Path(args.work)
    if args.worker == "raw":
        state, ids = work / "raw-state.bin", work / "ids.json"
        row = raw_worker(args.phase, state, ids, args.decode, args.threads)
    else:
        store = work / f"{args.worker}-store"
        row = foundry_worker(args.worker, args.phase, store, args.decode, args.threads)
    print(json.dumps(row))
    return 0


# -- the driver --------------------------------------------------------------------------------


def render_ids(engines: list[str], decode: int) -> dict[str, Any]:
    """The prompt's token ids as foundry renders them (mlx's tokenizer when it runs; the
    llamacpp renderer must agree with it, or the comparison would not be of the same work)."""
    req = prompt_request(decode)
    rendered: dict[str, Any] = {}
    for engine in ("mlx", "llamacpp"):
        if engine not in engines and not (engine == "llamacpp" and "raw" in engines):
            continue
        Backend = MLXBackend if engine == "mlx" else LlamaCppBackend
        backend = Backend(bench_config(Path(tempfile.mkdtemp()), decode), DEFAULT_MODEL)
        backend.load()
        prompt = backend._renderer.render(req)
        rendered[engine] = {"tokens": prompt.tokens, "prefix": len(prompt.prefix)}
        backend.close()
    ids = rendered.get("mlx") or rendered["llamacpp"]
    if len(rendered) == 2:
        same = rendered["mlx"] == rendered["llamacpp"]
        print(f"mlx and llamacpp render the same token ids: {same}")
    return ids


def run_worker(engine: str, phase: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", engine, "--phase", phase]
    command += ["--work", str(work), "--decode", str(args.decode)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{engine} {phase} failed:\n{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    middle = statistics.median(values)
    return f"{middle:.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decode", type=int, default=64, help="reply tokens per cold run")
    parser.add_argument(
        "--threads",
        type=int,
        help="llama.cpp threads (default: every core; on a shared machine a busy core stalls "
        "every llama.cpp step, so fewer threads can be faster)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--busy",
        nargs="?",
        const="only",
        choices=("only", "both"),
        help="measure beside a CPU hog and a second llama.cpp engine (both: quiet, then busy)",
    )
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("cold", "warm"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    engines = [e for e in args.engines.split(",") if e]
    if "raw" in engines or "llamacpp" in engines:
        from foundry.local.pull import download_gguf

        download_gguf(DEFAULT_MODEL, progress=print)  # kept from an earlier pull when there
    ids = render_ids(engines, args.decode)
    print(f"prompt: {ids['prefix']} static + {len(ids['tokens']) - ids['prefix']} dynamic tokens")
    conditions = {None: ["quiet"], "only": ["busy"], "both": ["quiet", "busy"]}[args.busy]
    results: dict[str, dict[str, Any]] = {}
    for condition in conditions:
        rows = measure(engines, ids, args, busy=condition == "busy")
        results[condition] = report(engines, rows, condition)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def measure(
    engines: list[str], ids: dict[str, Any], args: argparse.Namespace, *, busy: bool
) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    label = "busy" if busy else "quiet"
    for number in range(args.rounds):
        work = {e: Path(tempfile.mkdtemp(prefix=f"engines-{e}-")) for e in engines}
        for engine in engines:
            (work[engine] / "ids.json").write_text(json.dumps(ids))
        for phase in ("cold", "warm"):
            for engine in engines:
                if busy:
                    with Load():
                        row = run_worker(engine, phase, work[engine], args)
                else:
                    row = run_worker(engine, phase, work[engine], args)
                row["load_1m"] = round(os.getloadavg()[0], 2)
                line = f"{label} round {number + 1} {engine:8s} {phase}: {json.dumps(row)}"
                print(line, flush=True)
                rows[engine].append({"phase": phase, **row})
    return rows


def report(
    engines: list[str], rows: dict[str, list[dict[str, Any]]], condition: str
) -> dict[str, Any]:
    table: dict[str, dict[str, list[float]]] = {
        e: {f: [r[f] for r in rows[e] if r.get(f) is not None] for f in FIGURES} for e in engines
    }
    loads = [r["load_1m"] for e in engines for r in rows[e]]
    print(f"\n{condition}: median (range) over rounds; each figure from a fresh process;")
    print(f"1-minute load {min(loads):.2f}-{max(loads):.2f} after the measurements")
    print(f"{'engine':10s} {'cold prefill tok/s':>24s} {'warm TTFT s':>22s} {'decode tok/s':>22s}")
    for engine in engines:
        cells = [spread(table[engine][f]) for f in FIGURES]
        print(f"{engine:10s} {cells[0]:>24s} {cells[1]:>22s} {cells[2]:>22s}")
    medians = {e: {f: statistics.median(v) for f, v in table[e].items() if v} for e in engines}
    for a, b in (("llamacpp", "raw"), ("llamacpp", "mlx"), ("raw", "mlx")):
        if a in medians and b in medians:
            ratios = []
            for figure in FIGURES:
                x, y = medians[a].get(figure), medians[b].get(figure)
                if x and y:
                    ratio = y / x if figure == "warm_ttft_s" else x / y
                    ratios.append(f"{figure} {ratio:.2f}x")
            print(f"{a} vs {b} (higher is faster): " + ", ".join(ratios))
    return {"rows": rows, "medians": medians}


if __name__ == "__main__":
    raise SystemExit(main())
