"""A server backend's base URL: shown without secrets, parsed, and checked reachable before a
build (a TCP connect, no HTTP request), with errors that name the service and the fix."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from foundry.errors import BackendError

CONNECT_CHECK_TIMEOUT_S = 5.0


def safe_url(url: str) -> str:
    """The URL without credentials or query (a key could hide there), for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2] or '?'}{parts.path}"


def host_and_port(url: str, *, label: str, hint: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, or a BackendError: "invalid {label} base URL"."""
    parts = urlsplit(url)
    try:
        if parts.scheme in ("http", "https") and parts.hostname:
            return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # urllib's "Port out of range" / "could not be cast"
        pass
    raise BackendError(
        f"invalid {label} base URL {safe_url(url)!r}", hint, error_class="connection"
    )


def _through_a_proxy(url: str, host: str) -> bool:
    import urllib.request

    scheme = urlsplit(url).scheme
    return bool(urllib.request.getproxies().get(scheme)) and not urllib.request.proxy_bypass(host)


def check_reachable(url: str, *, service: str, hint: str, invalid_hint: str, label: str) -> None:
    """Fail fast, before a build, when nothing listens at the URL's host and port."""
    endpoint = host_and_port(url, label=label, hint=invalid_hint)
    if _through_a_proxy(url, endpoint[0]):
        return  # the client goes through the proxy; a direct connect proves nothing
    try:
        socket.create_connection(endpoint, timeout=CONNECT_CHECK_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:  # ValueError: an un-encodable host name
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise BackendError(
            f"cannot reach {service} at {safe_url(url)} ({reason})", hint, error_class="connection"
        ) from None
