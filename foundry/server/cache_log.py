"""The `foundry -v serve` lines that say what a request's prompt cost: the HIT/MISS verdict
and where every prompt token came from.

The numbers add up: prompt = reused + prefilled. Of the prefilled tokens, those saved to the
prefix store are said as such (usage's cache_write_tokens); the rest of input_tokens was
prefilled and kept in memory only. So a cold 18,331-token prompt whose first 16,819 tokens
were saved reads "18,331 prompt tokens: 0 reused, 18,331 prefilled (16,819 of them saved to
disk)", never "16,819 saved, 1,512 prefilled".
"""

from __future__ import annotations

from typing import Any

from foundry.usage import Usage

VERDICTS = {"memory": "HIT memory", "store": "HIT disk"}


def verdict(event: dict[str, Any]) -> str:
    """HIT memory, HIT disk, or MISS with the reason (the first word is what to grep)."""
    reason = event.get("reason", "no cached prefix")
    return VERDICTS.get(event.get("source") or "", f"MISS ({reason})")


def cache_line(usage: Usage, event: dict[str, Any], request_id: str) -> str:
    """One request's verdict and token sources, e.g. `HIT memory: 18,331 prompt tokens:
    16,819 reused, 1,512 prefilled; ttft 412 ms, 27 output tokens (req_local_...)`."""
    reused, saved = usage.cache_read_tokens, usage.cache_write_tokens
    prefilled = usage.input_tokens + saved
    tokens = f"{reused + prefilled:,} prompt tokens: {reused:,} reused, {prefilled:,} prefilled"
    if saved:
        tokens += f" ({saved:,} of them saved to disk)"
    return (
        f"{verdict(event)}: {tokens}; ttft {usage.ttft_ms or 0.0:,.0f} ms, "
        f"{usage.output_tokens:,} output tokens ({request_id})"
    )


def cold_prefill_line(event: dict[str, Any], usage: Any, request_id: str) -> str:
    """After a prefill that wrote the prefix store: how long the once-only work took, and
    whether the prefix was saved during it or is being saved after the reply (`foundry
    serve` on llama.cpp saves in the background)."""
    computed = usage.input_tokens + usage.cache_write_tokens
    rate = usage.prefill_tokens_per_s
    took = f" in {computed / rate:.1f} s" if rate else ""
    saved = (
        "being saved to the prefix store" if event.get("deferred") else "saved to the prefix store"
    )
    return (
        f"cold prefill done: {computed:,} tokens{took}, the {usage.cache_write_tokens:,}-token "
        f"prefix {saved} ({request_id})"
    )
