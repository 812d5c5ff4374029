"""A running `foundry serve`'s /cache/stats, read as a client: by `foundry dashboard`'s
server (the page only ever talks to its own origin, so its Content-Security-Policy can stay
`connect-src 'self'`) and by `foundry mcp`'s cache_stats tool.

The address is checked first: loopback only unless the operator allowed remote ones, since
the caller would otherwise relay a request to any host it can reach. Redirects are never
followed and no proxy is used (http.client, not urllib: a loopback server must not bounce
the fetch elsewhere), and the answer is capped in size and time.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from foundry.config import is_loopback_host
from foundry.errors import UsageError

DEFAULT_SERVE_URL = "http://127.0.0.1:8082"
TIMEOUT_S = 3.0
MAX_BYTES = 8 * 1024 * 1024  # a serve with thousands of cache entries is still well under


@dataclass(frozen=True)
class ServeTarget:
    url: str  # scheme://host:port, no path
    api_key: str | None = None

    @property
    def stats_url(self) -> str:
        return f"{self.url}/cache/stats"


def serve_target(
    url: str,
    *,
    allow_remote: bool,
    api_key: str | None = None,
    option: str = "--serve-url",
    remote_hint: str = "add --allow-remote-serve to let the dashboard fetch from another host",
) -> ServeTarget:
    """The checked address (`option` names it in errors); UsageError for a malformed or
    (unless allowed) remote one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{option} {url!r} is not an http:// address", f"e.g. {DEFAULT_SERVE_URL}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise UsageError(
            f"{option} {url!r} must be only scheme, host and port",
            f"e.g. {DEFAULT_SERVE_URL}; /cache/stats is asked for by foundry itself",
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise UsageError(f"{option} {url!r} has a bad port", "use 1 to 65535") from None
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise UsageError(f"{option} {url!r} is not on this machine (loopback)", remote_hint)
    return ServeTarget(f"{parts.scheme}://{parts.netloc}", api_key)


def fetch_stats(target: ServeTarget) -> tuple[int, dict[str, Any]]:
    """(HTTP status for the page, body): 200 and the stats, or 502 and what went wrong."""
    parts = urlsplit(target.url)
    host = parts.hostname or ""
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = connection_class(host, parts.port, timeout=TIMEOUT_S)
    headers = {"Accept": "application/json"}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    try:
        conn.request("GET", "/cache/stats", headers=headers)
        response = conn.getresponse()
        body = response.read(MAX_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return 502, _unavailable(target, f"nothing answered at {target.url} ({reason})")
    finally:
        conn.close()
    if response.status in (401, 403):
        return 502, _unavailable(
            target,
            f"{target.url} refused the dashboard's request ({response.status})",
            "give the serve's key with --serve-api-key (or FOUNDRY_SERVE_API_KEY)",
        )
    if response.status != 200:
        return 502, _unavailable(
            target, f"{target.url}/cache/stats answered HTTP {response.status}"
        )
    if len(body) > MAX_BYTES:
        return 502, _unavailable(target, f"{target.url}/cache/stats sent more than 8 MiB")
    try:
        stats = json.loads(body)
    except ValueError:
        stats = None
    if not isinstance(stats, dict) or "since_start" not in stats:
        return 502, _unavailable(
            target,
            f"{target.url}/cache/stats did not answer like foundry serve",
            "check --serve-url: is a foundry serve listening there?",
        )
    return 200, {"available": True, "url": target.url, "stats": stats}


def _unavailable(target: ServeTarget, error: str, hint: str | None = None) -> dict[str, Any]:
    return {
        "available": False,
        "url": target.url,
        "error": error,
        "hint": hint or "start one with `foundry serve`, or pass its address with --serve-url",
    }
