"""Token counts and their arithmetic: the one list of token fields, shared by every backend,
the ledger, pricing and the reports.

Meanings are Anthropic's, whichever backend filled them: input_tokens is uncached input only
(for a local model: the tokens prefilled now), and total input = input + cache read + cache
writes. A write's TTL decides its price, so writes are split by TTL.

A server that does not say how much of a prompt it served from its cache (some
OpenAI-compatible ones) leaves the split unknown: its prompt is all in input_tokens and also
in cache_read_unknown_tokens, so hit rates count only the input whose split is known.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# The ledger's column names and Usage's field names, in the order reports show them.
TOKEN_FIELDS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
)


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


@dataclass
class Usage:
    """One request's tokens and timings (or a sum of them: see __add__)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float | None = None
    # Local-model measurements; None where a backend cannot know them.
    prefill_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    prefill_saved_ms: float | None = None  # estimated prefill time the reused tokens saved
    # Input (already in input_tokens) whose cached share the server did not report. The
    # ledger records such a request's cache_read_tokens as NULL, never as a miss.
    cache_read_unknown_tokens: int = 0

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def hit_rate(self) -> float | None:
        """Share of the input read from the cache, over the input whose split is known; None
        when there was none (no input, or no server said what it cached)."""
        known = self.total_input_tokens - self.cache_read_unknown_tokens
        return self.cache_read_tokens / known if known > 0 else None

    def token_counts(self) -> dict[str, int]:
        """The counts under their short names (input, output, cache_read, ...), as
        summary.json and --json reports show them."""
        return {name.removesuffix("_tokens"): getattr(self, name) for name in TOKEN_FIELDS}

    def __add__(self, other: Usage) -> Usage:
        """Counts, durations and savings add up. The time to first token is the first
        part's; rates are the first part's prefill and the last part's generation (a local
        repair generates twice for one request); peak memory is the larger."""
        counts = {name: getattr(self, name) + getattr(other, name) for name in TOKEN_FIELDS}
        peaks = [m for m in (self.peak_memory_mb, other.peak_memory_mb) if m is not None]
        return Usage(
            **counts,
            ttft_ms=self.ttft_ms if self.ttft_ms is not None else other.ttft_ms,
            duration_ms=_sum(self.duration_ms, other.duration_ms),
            prefill_tokens_per_s=self.prefill_tokens_per_s or other.prefill_tokens_per_s,
            generation_tokens_per_s=other.generation_tokens_per_s or self.generation_tokens_per_s,
            peak_memory_mb=max(peaks) if peaks else None,
            prefill_saved_ms=_sum(self.prefill_saved_ms, other.prefill_saved_ms),
            cache_read_unknown_tokens=self.cache_read_unknown_tokens
            + other.cache_read_unknown_tokens,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
