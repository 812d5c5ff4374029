"""`foundry serve` answering alone, then while a `foundry build` runs beside it (the same
user, the same FOUNDRY_HOME: they share the cores through foundry's fair share). Both on
llama.cpp with SmolLM2-135M; each request: the same ~700-token system prompt (computed once
first), a new question, 64 tokens out. Prints each request's seconds, and the load.

    FOUNDRY_HOME=/tmp/bench-home .venv/bin/python bench/serve_beside_build.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FOUNDRY = str(Path(sys.executable).parent / "foundry")
PORT = 8197
SYSTEM = "You are a careful build orchestrator. Read files, write files, run the tests. " * 40


def ask(number: int) -> tuple[float, int]:
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": f"Question {number}: what do I test first?"}],
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/v1/messages",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-api-key": "local"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.load(response)
    return time.perf_counter() - started, reply["usage"]["output_tokens"]


def main() -> None:
    serve = subprocess.Popen(
        [FOUNDRY, "serve", "--backend", "llamacpp", "--model", "smollm2-135m", "--port", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    build = None
    try:
        time.sleep(8)  # loaded
        ask(0)  # the system prefix, computed once
        alone = [ask(n) for n in range(1, 4)]
        build = subprocess.Popen(
            [FOUNDRY, "build", "todo", "Build a CLI todo app with tests", "--yes"]
            + ["--dir", tempfile.mkdtemp(prefix="beside-"), "--max-turns", "2"]
            + ["--backend", "llamacpp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(15)  # the build loaded and prefilling
        beside = [ask(n) for n in range(4, 7)]
        running = build.poll() is None
    finally:
        for proc in (build, serve):
            if proc is not None:
                proc.kill()
                proc.wait()
    print(f"load {os.getloadavg()[0]:.2f}")
    print("alone:  " + ", ".join(f"{t:.2f} s ({n} tokens)" for t, n in alone))
    print("beside: " + ", ".join(f"{t:.2f} s ({n} tokens)" for t, n in beside))
    print(f"the build was still running at the end: {running}")


if __name__ == "__main__":
    main()
