"""Replay a long scripted build through AnthropicBackend against the local test server.

    .venv/bin/python bench/cache_hit_bench.py [--phases 5] [--turns 8] [--model M] [--ttl 5m]
                                              [--think-s 20] [--test-run-s 240]

Each phase is a fresh conversation (same tools + ~5,000-token static prompt, a new first
user turn), `--turns` tool-use turns long; the fake clock advances `--think-s` per turn and
`--test-run-s` between phases (a long local test run). Prints the cache hit rate and the
cost against the uncached counterfactual (every input token at the base price).
"""

from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundry.backends.anthropic.client import AnthropicBackend  # noqa: E402
from foundry.backends.base import Message, ModelRequest, ToolSpec  # noqa: E402
from foundry.config import FoundryConfig  # noqa: E402
from foundry.pricing import PricingTable  # noqa: E402
from foundry.usage import Usage  # noqa: E402
from tests.fake_anthropic import FakeAnthropic  # noqa: E402

PHASES = ["scout", "architect", "builder", "tester", "deployer"]
STATIC = "".join(
    f"Rule {i:03d}: read before you write, keep each change small, run the tests after it.\n"
    for i in range(240)
)
_PATH = {"path": {"type": "string"}}
TOOLS = [
    ToolSpec("read_file", "Read a workspace file.", {"type": "object", "properties": _PATH}),
    ToolSpec(
        "write_file",
        "Write a workspace file.",
        {"type": "object", "properties": {**_PATH, "content": {"type": "string"}}},
    ),
    ToolSpec(
        "edit_file",
        "Replace one exact text.",
        {
            "type": "object",
            "properties": {**_PATH, "old_text": {"type": "string"}, "new_text": {"type": "string"}},
        },
    ),
    ToolSpec("list_files", "List files.", {"type": "object", "properties": _PATH}),
    ToolSpec(
        "run_command",
        "Run a shell command.",
        {"type": "object", "properties": {"command": {"type": "string"}}},
    ),
    ToolSpec(
        "finish_phase",
        "End the phase.",
        {"type": "object", "properties": {"summary": {"type": "string"}}},
    ),
]


def run(phases: int, turns: int, model: str, ttl: str, think_s: float, test_run_s: float) -> int:
    table = PricingTable()
    totals = Usage()
    cost = uncached = Decimal(0)
    rows = []
    with FakeAnthropic() as server:
        os.environ.update(server.env())
        backend = AnthropicBackend(FoundryConfig(), model)
        backend.check()
        artifacts = ""
        for p in range(phases):
            name = PHASES[p % len(PHASES)]
            task = f"Task: build a CLI todo app with tests.\nPhase: {name}.\n{artifacts}"
            request = ModelRequest(
                model, STATIC, TOOLS, [Message("user", [{"type": "text", "text": task}])], 4096, ttl
            )
            phase = Usage()
            for turn in range(turns):
                last = turn == turns - 1
                action = {
                    "type": "tool_use",
                    "name": "finish_phase" if last else "read_file",
                    "input": {"summary": f"{name} done"} if last else {"path": f"src/m{turn}.py"},
                }
                server.enqueue(
                    [{"type": "text", "text": f"{name} turn {turn}: next step."}, action],
                    "tool_use",
                )
                response = backend.complete(request)
                u = response.usage
                for field in (
                    "input_tokens",
                    "output_tokens",
                    "cache_read_tokens",
                    "cache_write_5m_tokens",
                    "cache_write_1h_tokens",
                ):
                    setattr(phase, field, getattr(phase, field) + getattr(u, field))
                    setattr(totals, field, getattr(totals, field) + getattr(u, field))
                c = table.cost(u, model)
                cost += Decimal(str(c.cost_usd or 0))
                uncached += Decimal(str(c.uncached_cost_usd or 0))
                result = (
                    f"contents of src/m{turn}.py\n" + "def handler(x):\n    return x * 2\n" * 30
                )
                request.messages += [
                    Message("assistant", response.content),
                    Message(
                        "user",
                        [
                            {
                                "type": "tool_result",
                                "tool_use_id": response.tool_uses[0]["id"],
                                "content": result,
                            }
                        ],
                    ),
                ]
                server.clock.advance(think_s)
            rows.append((name, phase))
            artifacts += (
                f"\n## {name} report\n"
                + f"The {name} phase found and did the expected things.\n" * 20
            )
            server.clock.advance(test_run_s)
        backend.close()
    static = {"tools": [t.to_dict() for t in TOOLS], "system": STATIC, "messages": []}
    print(
        f"model {model}, ttl {ttl}, {phases} phases x {turns} turns, static prefix "
        f"{server.prompt_tokens(static)} tokens (server's token rule)\n"
    )
    head = ("phase", "input", "read", "write5m", "write1h", "output", "hit rate")
    print("{:<10} {:>8} {:>9} {:>8} {:>8} {:>7} {:>9}".format(*head))
    for name, u in rows + [("TOTAL", totals)]:
        rate = u.cache_read_tokens / u.total_input_tokens if u.total_input_tokens else 0.0
        print(
            f"{name:<10} {u.input_tokens:>8} {u.cache_read_tokens:>9} {u.cache_write_5m_tokens:>8} "
            f"{u.cache_write_1h_tokens:>8} {u.output_tokens:>7} {rate:>8.1%}"
        )
    if not uncached:  # a model without a sourced price: tokens only
        print(f"\ncost: n/a ({model} has no price; set one in cache_config.json)")
        return 0
    print(f"\ncost with caching   ${cost:.4f}\nuncached cost       ${uncached:.4f}")
    print(f"saved               ${uncached - cost:.4f} ({(1 - cost / uncached):.1%})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", type=int, default=5)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--model", default="claude-sonnet-4-6")
    parser.add_argument("--ttl", choices=["5m", "1h"], default="5m")
    parser.add_argument("--think-s", type=float, default=20.0)
    parser.add_argument("--test-run-s", type=float, default=240.0)
    args = parser.parse_args()
    return run(args.phases, args.turns, args.model, args.ttl, args.think_s, args.test_run_s)


if __name__ == "__main__":
    raise SystemExit(main())
