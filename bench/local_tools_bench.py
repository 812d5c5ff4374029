"""Constrained tool calls on SmolLM2-135M: the same turns with mlx.constrained_tools off and on.

The turns are the ones a build sends: the first user turn of the scout, architect and builder
phases with the packaged orchestrator prompt (tool_choice "any", as a local build asks), and
the architect's last turn (finish_phase with a test_command). For each setting it reports the
share of turns whose reply is a tool call the orchestrator would run (a known tool, arguments
that pass its checks, nothing malformed left in the text), tokens and seconds per turn, and,
constrained, what the grammar's mask costs per token against a decode step.

The static prefix is computed once into a temporary store and read by every turn, so the
figures are the turns' own. Run (the model is pulled on first use):
  FOUNDRY_HOME=/tmp/bench-home .venv/bin/python bench/local_tools_bench.py [--max-tokens N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.prefix_cache_bench import backend, static_and_dynamic  # noqa: E402
from foundry.backends.base import Message, ModelRequest, ToolChoice  # noqa: E402
from foundry.config import FoundryConfig  # noqa: E402
from foundry.local.model_dirs import DEFAULT_MODEL  # noqa: E402
from foundry.orchestrator.phases import BY_NAME, first_user_turn  # noqa: E402
from foundry.orchestrator.tools import tool_specs  # noqa: E402
from foundry.orchestrator.workspace import ToolFailure, validate_input  # noqa: E402

ANY = ToolChoice("any", parallel=False)  # as a local build asks: one call per turn
FINISH = ToolChoice("tool", "finish_phase", required=("test_command",))
TURNS = (("scout", ANY), ("architect", ANY), ("builder", ANY), ("architect", FINISH))


def turn_request(static: str, dynamic: str, phase: str, choice: ToolChoice, max_tokens: int):
    text = first_user_turn(dynamic, BY_NAME[phase], [])
    return ModelRequest(
        model=DEFAULT_MODEL,
        system=static,
        tools=tool_specs(),
        messages=[Message("user", [{"type": "text", "text": text}])],
        max_tokens=max_tokens,
        temperature=0.0,
        tool_choice=choice,
    )


def runnable(response) -> bool:
    """What the orchestrator would run: at least one call, each passing its input checks,
    and no malformed call left behind in the text."""
    calls = [b for b in response.content if b["type"] == "tool_use"]
    text = "".join(b.get("text", "") for b in response.content)
    if not calls or "<tool_call>" in text:
        return False
    try:
        for call in calls:
            validate_input(call["name"], call["input"])
    except ToolFailure:
        return False
    return True


def run_setting(store: Path, constrained: bool, static: str, dynamic: str, max_tokens: int):
    config = FoundryConfig.model_validate(
        {
            "prefix_cache": {"dir": str(store)},
            "mlx": {"max_tokens": max_tokens, "constrained_tools": constrained},
        }
    )
    b = backend(config, reuse=False)  # each turn starts from the saved prefix, as a phase does
    rows = []
    for phase, choice in TURNS:
        started = time.perf_counter()
        response = b.complete(turn_request(static, dynamic, phase, choice, max_tokens))
        seconds = time.perf_counter() - started
        event = b.last_cache_event
        rows.append(
            {
                "phase": phase,
                "choice": choice.type if choice.type != "tool" else choice.name,
                "valid": runnable(response),
                "calls": [b["name"] for b in response.content if b["type"] == "tool_use"],
                "stop_reason": response.stop_reason,
                "output_tokens": response.usage.output_tokens,
                "seconds": round(seconds, 2),
                "cache_read": response.usage.cache_read_tokens,
                "mask_ms_per_token": event.get("mask_ms_per_token"),
                "decode_ms_per_step": event.get("decode_ms_per_step"),
                "forced_tokens": event.get("forced_tokens"),
                "reply": json.dumps(response.content)[:300],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    masks = [r["mask_ms_per_token"] for r in rows if r["mask_ms_per_token"]]
    steps = [r["decode_ms_per_step"] for r in rows if r["decode_ms_per_step"]]
    mask_ms = statistics.mean(masks) if masks else None
    step_ms = statistics.mean(steps) if steps else None
    return {
        "valid_share": sum(r["valid"] for r in rows) / len(rows),
        "tokens_per_turn": statistics.mean(r["output_tokens"] for r in rows),
        "seconds_per_turn": statistics.mean(r["seconds"] for r in rows),
        "mask_ms_per_token": mask_ms,
        "decode_ms_per_step": step_ms,
        "mask_share_of_step": mask_ms / step_ms if mask_ms and step_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=512, help="reply cap per turn")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    static, dynamic = static_and_dynamic()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        warm = FoundryConfig.model_validate({"prefix_cache": {"dir": str(store)}})
        started = time.perf_counter()
        backend(warm).complete(turn_request(static, dynamic, "scout", ANY, 1))
        print(f"static prefix computed and saved in {time.perf_counter() - started:.1f} s")
        results = {}
        for constrained in (False, True):
            label = "on" if constrained else "off"
            print(f"-- constrained_tools {label}")
            rows = run_setting(store, constrained, static, dynamic, args.max_tokens)
            results[label] = {"turns": rows, "summary": summarize(rows)}
    print(
        f"\n{'constrained_tools':<18}{'valid':>8}{'tokens/turn':>13}{'s/turn':>9}{'mask/step':>11}"
    )
    for label, result in results.items():
        s = result["summary"]
        share = f"{s['mask_share_of_step']:.2%}" if s["mask_share_of_step"] else "-"
        print(
            f"{label:<18}{s['valid_share']:>8.0%}{s['tokens_per_turn']:>13.0f}"
            f"{s['seconds_per_turn']:>9.1f}{share:>11}"
        )
    on = results["on"]["summary"]
    if on["mask_ms_per_token"]:
        print(
            f"mask: {on['mask_ms_per_token']:.3f} ms per token against a decode step of "
            f"{on['decode_ms_per_step']:.1f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
