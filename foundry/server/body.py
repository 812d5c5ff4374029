"""A request body read and decoded strictly, so that anything malformed is the client's 400
(or 413) in Anthropic's shape, never a 500 and a traceback in the server's log.

Python's json module accepts what the API does not, and what breaks code further on: lone
surrogates ("\\ud800" cannot be encoded, so hashing or tokenizing the text failed), NaN and
Infinity, numbers too large for a double, and nesting deep enough to exhaust the recursion
limit (json.loads raised RecursionError) or to make recursive code downstream crawl. All of
them are refused here, before the request is looked at.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from foundry.server.protocol import ApiError, invalid

# Far deeper than any real request (Claude Code's deepest tool schema is ~10 levels), far
# shallower than Python's recursion limit, so code that recurses over a body stays safe.
MAX_DEPTH = 100
MAX_INT_DIGITS = 100  # past this an integer is no count, id or size any client sends
_SURROGATE = re.compile("[\ud800-\udfff]")
# Only an escape can put a surrogate into a body that decodes as UTF-8: without one in the
# raw bytes, the strings need no search.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; a 413 as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {int(declared):,} bytes, over the {limit:,} limit")
    body = bytearray()  # (appending to bytes copied the whole body per chunk)
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is over the {limit:,}-byte limit")
    except ClientDisconnect:
        raise invalid("the client closed the connection before the body ended") from None
    return bytes(body)


async def read_json(request: Request, limit: int) -> Any:
    return parse_json(await read_body(request, limit))


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or a 400 that says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(
            f"the request body is not UTF-8: byte 0x{raw[exc.start]:02x} at position "
            f"{exc.start} is not valid there"
        ) from None
    try:
        value = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError:
        raise invalid(
            f"the request body is nested too deeply (more than {MAX_DEPTH} levels)"
        ) from None
    except ValueError as exc:  # JSONDecodeError, and the hooks' refusals
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    check_tree(value, strings=_SURROGATE_ESCAPE.search(raw) is not None)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (the API accepts finite numbers only)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a double")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"a number of {digits:,} digits is too large")
    return int(text)


def _where(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "body"


def check_tree(value: Any, *, strings: bool = True) -> None:
    """Refuse nesting past MAX_DEPTH and (when `strings`) lone surrogates in keys or text.
    Iterative, so a deep body cannot exhaust the stack here either."""
    if not isinstance(value, dict | list):
        return  # a scalar body is refused as not an object
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise invalid(
                f"{_where(path[:8])}...: the request body is nested more than {MAX_DEPTH} "
                "levels deep"
            )
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if strings and isinstance(key, str) and _SURROGATE.search(key):
                raise _surrogate(path + ("<key>",))
            if isinstance(child, dict | list):
                stack.append((child, path + (key,)))
            elif strings and isinstance(child, str) and _SURROGATE.search(child):
                raise _surrogate(path + (key,))


def _surrogate(path: tuple[Any, ...]) -> ApiError:
    return invalid(
        f"{_where(path)}: the text holds a lone surrogate (an unpaired \\ud800-\\udfff "
        "escape), which is not a character; send valid Unicode"
    )
