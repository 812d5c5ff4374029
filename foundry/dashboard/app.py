"""The dashboard's routes: the page (static files, packaged, no build step), the JSON API
behind each view, and the live event stream.

Security: every response carries a strict Content-Security-Policy (scripts and styles from
this origin only, no inline script, no framing, no fetch to any other origin), so text the
ledger holds (task text, tool details: written by a model) can never run even if a page
bug put it into the DOM as markup; the page itself inserts it only as text. The Host
header must name the address the dashboard listens on, which stops DNS rebinding (a web
page on another site resolving its own name to 127.0.0.1 to read the ledger). The API is
GET only: nothing here changes anything.
"""

from __future__ import annotations

import importlib.resources
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foundry.config import FoundryConfig
from foundry.dashboard import builds as q
from foundry.dashboard.costs import CostsCache, backends_view, costs_view, warm_up
from foundry.dashboard.live import build_events
from foundry.dashboard.readonly import ReadOnlyLedger
from foundry.errors import FoundryError, UsageError
from foundry.ledger.costs import CostsOptions
from foundry.server.stats_client import ServeTarget, fetch_stats

log = logging.getLogger(__name__)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass
class DashboardSettings:
    ledger: ReadOnlyLedger
    config: FoundryConfig
    serve: ServeTarget
    # Host header values accepted; ["*"] only when the operator allowed a non-loopback host.
    allowed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost", "::1"])
    warm: bool = True  # compute the first pages' reports at start-up, in the background


def host_name(header: str) -> str:
    """The host of a Host header, without its port ("[::1]:8090" is "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """Refuses a Host that is not one of ours (DNS rebinding), and adds SECURITY_HEADERS to
    every response, errors and the event stream included."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if "*" not in self.allowed and host not in self.allowed:
            response = JSONResponse(
                {"error": "this Host is not the dashboard's", "hint": "open it by its address"},
                status_code=421,
                headers={k.decode(): v.decode() for k, v in SECURITY_HEADERS},
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package (so any install serves the same)."""
    root = importlib.resources.files("foundry.dashboard") / "static"
    files = {}
    for entry in root.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def _error(exc: FoundryError) -> JSONResponse:
    status = 400 if isinstance(exc, UsageError) else 503
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=status)


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"{name}={value!r} is not a number", f"give {name} as an integer"
        ) from None


def _costs_options(request: Request, settings: DashboardSettings) -> CostsOptions:
    params = request.query_params
    known = {"by", "since", "until", "tz", "build", "model", "backend"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise UsageError(f"unknown parameter {unknown[0]!r}", f"use: {', '.join(sorted(known))}")
    return CostsOptions(
        by=params.get("by") or "day",
        since=params.get("since") or None,
        until=params.get("until") or None,
        tz=params.get("tz") or None,
        build=params.get("build") or None,
        model=params.get("model") or None,
        backend=params.get("backend") or None,
        db=settings.ledger.path,
    )


def create_app(settings: DashboardSettings) -> Starlette:
    static = _static_files()
    ledger = settings.ledger
    cache = CostsCache()
    if settings.warm:

        def warm() -> None:
            try:
                warm_up(cache, ledger.connection, ledger.path, settings.config)
            except (FoundryError, sqlite3.Error) as exc:  # the page will say it when asked
                log.info("dashboard warm-up skipped: %s", exc)

        threading.Thread(target=warm, name="dashboard-warm-up", daemon=True).start()

    async def in_thread(func: Any, *args: Any) -> JSONResponse:
        """Run a read on a worker thread (SQLite blocks), mapping foundry errors to JSON."""

        def call() -> Any:
            with ledger.connection() as conn:
                return func(conn, *args)

        try:
            return JSONResponse(await anyio.to_thread.run_sync(call))
        except FoundryError as exc:
            return _error(exc)
        except sqlite3.Error as exc:  # e.g. the file was replaced under us: say so as JSON
            return JSONResponse(
                {"error": f"cannot read the ledger {ledger.path}: {exc}", "hint": None},
                status_code=503,
            )

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        found = static.get(name)
        if found is None:
            return JSONResponse({"error": f"no such file: {name}"}, status_code=404)
        body, media_type = found
        # no-cache: after an upgrade the page and its scripts must match.
        return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})

    async def api_builds(request: Request) -> Response:
        try:
            page_number = _int(request, "page", 1)
            per_page = _int(request, "per_page", q.PER_PAGE)
        except UsageError as exc:
            return _error(exc)
        status = request.query_params.get("status") or None
        name = request.query_params.get("name") or None
        return await in_thread(
            lambda conn: q.list_builds(
                conn, page=page_number, per_page=per_page, status=status, name=name
            )
        )

    async def api_running(request: Request) -> Response:
        return await in_thread(lambda conn: {"builds": q.running_builds(conn)})

    async def api_build(request: Request) -> Response:
        build_id = request.path_params["build_id"]

        def read(conn: Any) -> Any:
            return q.build_detail(conn, build_id)

        response = await in_thread(read)
        if response.body == b"null":
            return JSONResponse({"error": f"no build with id {build_id}"}, status_code=404)
        return response

    async def api_build_events(request: Request) -> Response:
        build_id = request.path_params["build_id"]
        found = await in_thread(lambda conn: q.find_build_id(conn, build_id))
        if found.body == b"null":
            return JSONResponse({"error": f"no build with id {build_id}"}, status_code=404)
        return StreamingResponse(
            build_events(ledger, build_id),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def api_costs(request: Request) -> Response:
        try:
            options = _costs_options(request, settings)
        except UsageError as exc:
            return _error(exc)
        return await in_thread(
            lambda conn: cache.get(
                conn,
                "costs",
                options,
                lambda: costs_view(conn, ledger.path, settings.config, options),
            )
        )

    async def api_costs_backends(request: Request) -> Response:
        try:
            options = _costs_options(request, settings)
        except UsageError as exc:
            return _error(exc)
        return await in_thread(
            lambda conn: cache.get(
                conn,
                "backends",
                options,
                lambda: backends_view(conn, ledger.path, settings.config, options),
            )
        )

    async def api_serve(request: Request) -> Response:
        status, body = await anyio.to_thread.run_sync(fetch_stats, settings.serve)
        return JSONResponse(body, status_code=status)

    async def api_info(request: Request) -> Response:
        return JSONResponse({"ledger": str(ledger.path), "serve_url": settings.serve.url})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", page, methods=["GET"]),
        Route("/api/info", api_info, methods=["GET"]),
        Route("/api/builds", api_builds, methods=["GET"]),
        Route("/api/builds/running", api_running, methods=["GET"]),
        Route("/api/builds/{build_id}", api_build, methods=["GET"]),
        Route("/api/builds/{build_id}/events", api_build_events, methods=["GET"]),
        Route("/api/costs", api_costs, methods=["GET"]),
        Route("/api/costs/backends", api_costs_backends, methods=["GET"]),
        Route("/api/serve", api_serve, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, allowed_hosts=settings.allowed_hosts)],
    )
