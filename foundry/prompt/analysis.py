"""Pure functions behind `foundry analyze-prompt`: sizes, the cache minimum, where the
boundary marker should sit, cache busters, and the cost projection. No I/O: they take
rendered texts, token counts and prices, and return plain data.

The cost model (docs/prompt-and-analysis.md works an example by hand):

* A build makes R model requests, and every one sends the same static prefix of S tokens.
  Requests within a build are closer together than the TTL, so after the first request of
  a build the prefix is always a cache read.
* Builds arrive as a Poisson process at `builds_per_hour` (lambda). The gap before the next
  build is exponential, so the next build finds the prefix still cached with probability
  p = 1 - exp(-lambda * TTL), TTL in hours (5m = 1/12 h, 1h = 1 h).
* The first of N builds always starts cold. Per build, with prices per token:
    uncached         R * S * input
    cached, cold     S * (write + (R - 1) * read)
    cached, expected S * (p * read + (1 - p) * write + (R - 1) * read)
  so N builds cost  cold + (N - 1) * expected, against N * R * S * input uncached.
* A static part below the model's minimum cacheable length is never cached (the API then
  charges plain input, silently): its "cached" costs equal the uncached cost.
Only the static prefix is projected: the task part, the conversation and the output cost
the same whichever TTL is chosen here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from foundry.pricing import ModelPrice
    from foundry.prompt.template import VariableUse

TTL_HOURS: dict[str, float] = {"5m": 5 / 60, "1h": 1.0}
# Constant text below the marker smaller than this is not worth moving (a heading, a rule).
NEGLIGIBLE_TOKENS = 32


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class PartSize:
    lines: int
    chars: int
    tokens: int


def part_size(text: str, tokens: int) -> PartSize:
    return PartSize(lines=text.count("\n") + 1 if text else 0, chars=len(text), tokens=tokens)


# --------------------------------------------------------------------------- cache minimum


@dataclass(frozen=True)
class Cacheability:
    model: str
    known_model: bool  # in the pricing table
    min_cache_tokens: int | None  # None: not documented for this model
    static_tokens: int
    meets_minimum: bool | None  # None: the minimum is unknown
    # True when the count is an estimate and lies within its error of the minimum.
    near_minimum: bool


def cacheability(
    static_tokens: int, model: str, price: ModelPrice | None, relative_error: float = 0.0
) -> Cacheability:
    minimum = price.min_cache_tokens if price is not None else None
    meets = None if minimum is None else static_tokens >= minimum
    near = minimum is not None and abs(static_tokens - minimum) <= relative_error * minimum
    return Cacheability(model, price is not None, minimum, static_tokens, meets, near)


def models_not_cached(
    static_tokens: int, prices: Sequence[ModelPrice]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The models whose minimum the static part misses, and those whose minimum is unknown."""
    below = [
        {"model": p.model, "min_cache_tokens": p.min_cache_tokens}
        for p in prices
        if p.min_cache_tokens is not None and static_tokens < p.min_cache_tokens
    ]
    unknown = [p.model for p in prices if p.min_cache_tokens is None]
    return below, unknown


# --------------------------------------------------------------------------- the boundary


@dataclass(frozen=True)
class BoundaryAdvice:
    status: Literal["ok", "too_early", "too_late"]
    message: str
    marker_line: int  # the marker's line in the template
    static_lines: int  # rendered lines above the marker
    # Rendered lines that are the same for every sample task, counted from the top of the
    # whole prompt (static + dynamic, marker removed): the longest never-changing prefix.
    common_prefix_lines: int
    common_prefix_tokens: int
    uncached_constant_tokens: int  # never-changing text below the marker (too early)
    first_difference_line: int | None  # rendered line of the static part that varies (too late)
    recommended_template_line: int | None  # put the marker directly above this template line


def _common_prefix_lines(texts: Sequence[str]) -> list[str]:
    split = [t.split("\n") for t in texts]
    common: list[str] = []
    for row in zip(*split, strict=False):
        if any(line != row[0] for line in row):
            break
        common.append(row[0])
    return common


def boundary_advice(
    variants: Sequence[tuple[str, str]],
    marker_line: int,
    uses: Sequence[VariableUse],
    count_tokens: Callable[[str], int],
) -> BoundaryAdvice:
    """Where the marker should sit, from the (static, dynamic) renderings of several
    different tasks and the template lines where variables are used."""
    statics = [s for s, _ in variants]
    static_lines = statics[0].count("\n") + 1
    wholes = [f"{s}\n{d}" for s, d in variants]
    common = _common_prefix_lines(wholes)
    common_tokens = count_tokens("\n".join(common))
    static_uses = [u.template_line for u in uses if u.part == "static"]
    dynamic_uses = [u.template_line for u in uses if u.part == "dynamic"]

    varies = any(s != statics[0] for s in statics)
    if varies or static_uses:
        line = len(_common_prefix_lines(statics)) + 1 if varies else None
        target = min(static_uses) if static_uses else None
        where = (
            f"directly above template line {target}, the first line that uses a variable"
            if target
            else f"above its rendered line {line}"
        )
        what = (
            f"the static part changes with the task (from its rendered line {line}), so a "
            "build with another task writes a new cache instead of reading one"
            if varies
            else "the static part uses a render variable, so another task can change it"
        )
        return BoundaryAdvice(
            "too_late",
            f"marker too late: {what}; move the marker {where}",
            marker_line,
            static_lines,
            len(common),
            common_tokens,
            0,
            line,
            target,
        )

    constant = _common_prefix_lines([d for _, d in variants])
    constant_tokens = count_tokens("\n".join(constant)) if constant else 0
    target = min(dynamic_uses) if dynamic_uses else None
    if constant_tokens > NEGLIGIBLE_TOKENS:
        where = (
            f"down to directly above template line {target}, the first line that uses a variable"
            if target
            else "down: the dynamic part uses no variable at all"
        )
        return BoundaryAdvice(
            "too_early",
            f"marker too early: {len(constant)} rendered lines (~{constant_tokens} tokens) below "
            f"it are the same for every task and are sent uncached; move the marker {where}",
            marker_line,
            static_lines,
            len(common),
            common_tokens,
            constant_tokens,
            None,
            target,
        )
    return BoundaryAdvice(
        "ok",
        "the marker ends the longest never-changing prefix"
        + (
            f" (the ~{constant_tokens} constant tokens below it are negligible)" if constant else ""
        ),
        marker_line,
        static_lines,
        len(common),
        common_tokens,
        constant_tokens,
        None,
        None,
    )


# --------------------------------------------------------------------------- cache busters


@dataclass(frozen=True)
class CacheBuster:
    line: int  # 1-based line of the rendered static part
    column: int  # 1-based
    kind: str
    text: str
    source: str | None = None  # "file:line" where it is written, when found


_BUSTERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, flags))
    for kind, pattern, flags in (
        ("API key (a secret, too)", r"\bsk-[A-Za-z0-9_-]{16,}", 0),
        (
            "UUID",
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
            0,
        ),
        (
            "timestamp",
            r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?",
            0,
        ),
        ("date", r"\b(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])\b", 0),
        ("date", r"\b(?:0?[1-9]|[12]\d|3[01])[/.](?:0?[1-9]|1[0-2])[/.](?:19|20)\d{2}\b", 0),
        (
            "date",
            r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.? "
            r"(?:\d{1,2}(?:st|nd|rd|th)?,? )?(?:19|20)\d{2}\b",
            0,
        ),
        (
            "date",
            r"\b\d{1,2}(?:st|nd|rd|th)? (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)"
            r"[a-z]*\.? (?:19|20)\d{2}\b",
            0,
        ),
        ("time", r"\b(?:[01]?\d|2[0-3]):[0-5]\d:[0-5]\d\b", 0),
        ("time", r"\b(?:0?\d|1[0-2]):[0-5]\d ?(?:am|pm|AM|PM)\b", 0),
        ("unix timestamp", r"\b1[5-9]\d{8}(?:\d{3})?\b", 0),
        ("IP address", r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b", 0),
        ("hostname", r"\blocalhost:\d+\b", 0),
        ("hostname", r"\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:local|internal|lan|corp)\b", 0),
        ("hostname", r"\bip-\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3}\b", 0),
        (
            "absolute path",
            r"(?<![\w.~/-])/(?:home|Users|tmp|var|private|root|mnt|opt|srv|work|workspace)"
            r"/[^\s`'\")\]>,;]+",
            0,
        ),
        ("absolute path", r"\b[A-Za-z]:\\[^\s`'\")\]>,;]+", 0),
        ("version string", r"\bv?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.]+)?\b", 0),
        ("version string", r"\bversion:? \d+(?:\.\d+)+\b", re.IGNORECASE),
        ("random id", r"\b(?:req|msg|toolu|run|build|sess|id)_[A-Za-z0-9]{8,}\b", 0),
        ("random id", r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{16,}\b", 0),
        ("random id", r"\b(?=\w*\d)(?=\w*[a-z])(?=\w*[A-Z])[A-Za-z0-9]{20,}\b", 0),
    )
)


def find_cache_busters(static: str) -> list[CacheBuster]:
    """Text in the static part that is likely to change between runs although it is not a
    variable: it was generated (a date, a path, an id) and will be generated differently."""
    found: list[CacheBuster] = []
    for number, line in enumerate(static.split("\n"), start=1):
        taken: list[tuple[int, int]] = []
        for kind, pattern in _BUSTERS:
            for match in pattern.finditer(line):
                start, end = match.span()
                if any(start < b and a < end for a, b in taken):
                    continue  # already reported as a more specific kind
                taken.append((start, end))
                found.append(CacheBuster(number, start + 1, kind, match.group()))
    return sorted(found, key=lambda b: (b.line, b.column))


# --------------------------------------------------------------------------- projection


def warm_probability(builds_per_hour: float, ttl: str) -> float:
    """Chance the next build finds the prefix still cached: 1 - exp(-rate * TTL)."""
    return 1.0 - math.exp(-builds_per_hour * TTL_HOURS[ttl])


def break_even_requests(write: float, read: float, base: float) -> int | None:
    """The fewest requests in one cold build for which caching costs less than no caching:
    write + (R - 1) * read < R * base  <=>  R - 1 > (write - base) / (base - read).
    None when reads are not cheaper than plain input (caching never pays)."""
    if read >= base:
        return None
    return max(1, math.floor((write - base) / (base - read)) + 2)


def break_even_builds_per_hour(write_5m: float, write_1h: float, read: float) -> float | None:
    """The build rate above which a 1h TTL costs less than 5m. Per build the two differ
    only in the first request, e^(-rate*T) * (write - read) + read, so they cost the same
    where rate = ln((w1h - read) / (w5m - read)) / (1h - 5m). None when one TTL is never
    dearer (odd price overrides)."""
    if write_5m <= read or write_1h <= read:
        return None
    rate = math.log((write_1h - read) / (write_5m - read)) / (TTL_HOURS["1h"] - TTL_HOURS["5m"])
    return max(0.0, rate)


RecommendedTtl = Literal["5m", "1h", "none"]


@dataclass(frozen=True)
class ModelProjection:
    model: str
    min_cache_tokens: int | None
    will_cache: bool | None  # None: minimum unknown (assumed to cache)
    priced: bool
    uncached_usd: float | None = None
    cached_5m_usd: float | None = None
    cached_1h_usd: float | None = None
    recommended_ttl: RecommendedTtl | None = None
    saving_usd: float | None = None  # uncached minus the recommended option
    break_even_requests: dict[str, int | None] = field(default_factory=dict)
    break_even_builds_per_hour: float | None = None  # 1h beats 5m above this rate


def project_model(
    price: ModelPrice,
    static_tokens: int,
    *,
    builds: int,
    builds_per_hour: float,
    requests_per_build: int,
) -> ModelProjection:
    """The static prefix's cost over `builds` builds: uncached, 5m and 1h (module docstring)."""
    minimum = price.min_cache_tokens
    caches = None if minimum is None else static_tokens >= minimum
    rates = price.rates
    if rates is None:
        return ModelProjection(price.model, minimum, caches, priced=False)
    base, read = float(rates.input), float(rates.cache_read)
    writes = {"5m": float(rates.cache_write_5m), "1h": float(rates.cache_write_1h)}
    s, r, n = static_tokens / 1_000_000, requests_per_build, builds  # prices are per MTok
    uncached = n * r * s * base
    cached: dict[str, float] = {}
    for ttl, write in writes.items():
        if caches is False:
            cached[ttl] = uncached  # below the minimum the API silently does not cache
            continue
        p = warm_probability(builds_per_hour, ttl)
        cold = s * (write + (r - 1) * read)
        expected = s * (p * read + (1 - p) * write + (r - 1) * read)
        cached[ttl] = cold + (n - 1) * expected
    options: list[tuple[RecommendedTtl, float]] = [
        ("5m", cached["5m"]),
        ("1h", cached["1h"]),
        ("none", uncached),
    ]
    best, best_cost = min(options, key=lambda o: o[1])  # ties keep the earlier option
    if caches is False:
        best, best_cost = "none", uncached
    return ModelProjection(
        price.model,
        minimum,
        caches,
        priced=True,
        uncached_usd=uncached,
        cached_5m_usd=cached["5m"],
        cached_1h_usd=cached["1h"],
        recommended_ttl=best,
        saving_usd=uncached - best_cost,
        break_even_requests={
            ttl: break_even_requests(write, read, base) for ttl, write in writes.items()
        },
        break_even_builds_per_hour=break_even_builds_per_hour(writes["5m"], writes["1h"], read),
    )


def projection_dict(projection: ModelProjection) -> dict[str, Any]:
    return asdict(projection)
