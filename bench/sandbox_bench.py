"""What the sandbox costs per command: `true` unconfined, and `true` in bubblewrap, through
foundry's run_command, in a working directory of --files small files (as root the directory
is lent to the command's uid and given back, so its size counts). With --against TREE the
same loop also runs on another checkout of foundry (an older commit), interleaved round by
round, so both see the same machine.

    python bench/sandbox_bench.py --rounds 5 --commands 20 --files 200 --against /tmp/old

Prints the median milliseconds per command of each, and the ratios.
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
import json, sys, tempfile, time
from pathlib import Path
from foundry.config import BuildConfig
from foundry.orchestrator.sandbox import Sandbox
from foundry.orchestrator.shell import run_command

mode, commands, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
work = Path(tempfile.mkdtemp(prefix="foundry-bench-")) / "work"
work.mkdir()
for index in range(files):
    (work / f"file-{index}.txt").write_text("x\n")
box = Sandbox(work, BuildConfig(sandbox="require" if mode == "sandbox" else "off"))
run_command("true", work, timeout_s=30, output_limit=100, sandbox=box)  # warm-up
started = time.perf_counter()
for _ in range(commands):
    result = run_command("true", work, timeout_s=30, output_limit=100, sandbox=box)
    assert result.exit_code == 0, result.output
elapsed = time.perf_counter() - started
box.close()
print(json.dumps({"ms": elapsed / commands * 1000}))
"""


def _one(tree: Path, mode: str, commands: int, files: int) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, mode, str(commands), str(files)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", type=int, default=20)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    trees = {"this": here} | ({"against": args.against.resolve()} if args.against else {})
    figures: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            for mode in ("unconfined", "sandbox"):
                ms = _one(tree, mode, args.commands, args.files)
                figures.setdefault(f"{label} {mode}", []).append(ms)
    print(f"uid {os.getuid()}, {args.files} files, load {os.getloadavg()[0]:.2f} at the end")
    medians = {key: statistics.median(values) for key, values in figures.items()}
    for key, value in medians.items():
        spread = f"{min(figures[key]):.1f}-{max(figures[key]):.1f}"
        print(f"{key:22} {value:7.1f} ms per command ({spread})")
    print(f"sandbox / unconfined: {medians['this sandbox'] / medians['this unconfined']:.2f}x")
    if args.against:
        ratio = medians["this sandbox"] / medians["against sandbox"]
        print(f"sandbox, this / against: {ratio:.2f}x")


if __name__ == "__main__":
    main()
