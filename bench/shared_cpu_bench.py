"""Two llama.cpp processes on one machine: one alone, then two at once, each prefilling
--prompt tokens and decoding 64 (as two requests: the share is fitted before each, once
every copy has loaded), through foundry's engine (its quiet thread pool and share of
the cores) and through plain llama-cpp-python with a thread per core (what foundry did
before), interleaved. Prints each figure and the two-at-once / alone ratios.

    python bench/shared_cpu_bench.py MODEL.gguf --prompt 1500 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_WORKER = r"""
import json, sys, time
from pathlib import Path
mode, model, n, copies = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tokens = [(i * 7919) % 40000 + 100 for i in range(n)]
if mode == "foundry":
    from foundry.local.engine import StepTimes
    from foundry.local.llamacpp_engine import LlamaCppModel
    engine = LlamaCppModel(Path(model), "bench", n_ctx=n + 256)
    while engine.threads.share.live() < copies:  # every copy loaded: they start together
        time.sleep(0.05)
    engine.threads.fit()  # what each request of a build does first
    start = time.perf_counter(); engine.feed(tokens); prefill = time.perf_counter() - start
    engine.threads.fit()
    start = time.perf_counter()
    for token in tokens[:64]:
        engine.feed([token])
    decode = time.perf_counter() - start
    engine.close()
else:
    import os
    from llama_cpp import Llama
    cores = len(os.sched_getaffinity(0))
    llm = Llama(model_path=model, n_ctx=n + 256, n_threads=cores, n_threads_batch=cores,
                n_batch=512, verbose=False)
    start = time.perf_counter(); llm.eval(tokens); prefill = time.perf_counter() - start
    start = time.perf_counter()
    for token in tokens[:64]:
        llm.eval([token])
    decode = time.perf_counter() - start
print(json.dumps({"prefill_s": prefill, "decode_s": decode}))
"""


def _run(mode: str, model: str, prompt: int, copies: int) -> list[dict[str, float]]:
    here = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, mode, model, str(prompt), str(copies)],
            cwd=here,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(copies)
    ]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    figures: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(args.rounds):
        for mode in ("foundry", "plain"):
            for copies in (1, 2):
                for result in _run(mode, args.model, args.prompt, copies):
                    for key, value in result.items():
                        figures.setdefault((mode, copies, key), []).append(value)
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end")
    for (mode, copies, key), values in sorted(figures.items()):
        spread = f"{min(values):.2f}-{max(values):.2f}"
        median = statistics.median(values)
        print(f"{mode:8} {copies} at once  {key:9} {median:7.2f} s ({spread})")
    for mode in ("foundry", "plain"):
        for key in ("prefill_s", "decode_s"):
            alone = statistics.median(figures[(mode, 1, key)])
            two = statistics.median(figures[(mode, 2, key)])
            print(f"{mode:8} {key:9} two at once / alone: {two / alone:.2f}x")


if __name__ == "__main__":
    main()
