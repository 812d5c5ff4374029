"""Flash attention on and off in llama.cpp, on this machine: cold prefill, warm time to first
token (a short turn appended to a long held prefix) and decode, interleaved.

llama-server runs `-fa auto` by default, which turns flash attention on where the backend
supports it (the CPU does); llama-cpp-python's Llama has it off unless asked. This bench is
what `llamacpp.flash_attn` "auto" rests on: run it alone on a quiet machine.

    python bench/flash_attention_bench.py [--model smollm2-135m] [--tokens 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import llama_cpp

from foundry.local.llamacpp_models import resolve_gguf


def run_once(path: str, flash: bool, prompt: list[int], turn: list[int], decode: int) -> dict:
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=len(prompt) + len(turn) + decode + 64,
        n_batch=512,
        n_threads=os.cpu_count(),
        n_threads_batch=os.cpu_count(),
        flash_attn=flash,
        verbose=False,
    )
    try:
        started = time.perf_counter()
        for start in range(0, len(prompt), 512):
            llm.eval(prompt[start : start + 512])
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        llm.eval(turn)
        warm_ttft = time.perf_counter() - started
        started = time.perf_counter()
        token = int(turn[-1])
        for _ in range(decode):
            llm.eval([token])
        decode_s = time.perf_counter() - started
    finally:
        llm.close()
    return {"prefill_s": prefill, "warm_ttft_s": warm_ttft, "decode_s": decode_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--turn", type=int, default=40)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = str(resolve_gguf(args.model))
    vocab_llm = llama_cpp.Llama(model_path=path, n_ctx=64, vocab_only=True, verbose=False)
    text = " ".join(f"line {i}: the build step {i % 17} writes file_{i}.py" for i in range(4000))
    tokens = vocab_llm.tokenize(text.encode())
    prompt, turn = tokens[: args.tokens], tokens[args.tokens : args.tokens + args.turn]
    results: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.rounds):
        for flash in (False, True):  # interleaved, so drift hits both alike
            results[flash].append(run_once(path, flash, prompt, turn, args.decode))
    load = os.getloadavg()
    print(
        f"model {args.model}, {args.tokens} prompt tokens, {args.turn}-token turn, "
        f"{args.decode} decoded, {args.rounds} rounds, load {load[0]:.2f}"
    )
    for key in ("prefill_s", "warm_ttft_s", "decode_s"):
        off = statistics.median(r[key] for r in results[False])
        on = statistics.median(r[key] for r in results[True])
        print(f"  {key:12} off {off:7.3f}  on {on:7.3f}  on/off {on / off:5.2f}x")


if __name__ == "__main__":
    main()
