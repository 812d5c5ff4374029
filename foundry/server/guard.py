"""What every route shares at its edges: the key check, an error in Anthropic's shape, and
a failure turned into the API's 500 with one line in the log (no traceback unless debug
logging is on: the DESIGN's rule for user-facing errors, and a client can trigger it)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from foundry.server.protocol import ApiError
from foundry.server.service import ServeService

log = logging.getLogger(__name__)


def error_response(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        exc.body(), status_code=exc.status, headers={**(headers or {}), **exc.headers}
    )


def service_of(request: Request) -> ServeService:
    service: ServeService = request.app.state.service
    return service


def check_auth(request: Request, service: ServeService) -> None:
    """With --api-key, a request must carry it (x-api-key or Authorization: Bearer)."""
    expected = service.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "invalid x-api-key")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = 404 if exc.status_code == 404 else exc.status_code
    message = f"{request.method} {request.url.path}: " + (
        "not found" if status == 404 else str(exc.detail).lower()
    )
    return error_response(ApiError(status, message))


def _failed(request: Request, exc: Exception) -> Response:
    # One line, as the worker logs a failure; the traceback only with debug logging on.
    log.error(
        "%s %s failed: %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc,
        exc_info=log.isEnabledFor(logging.DEBUG),
    )
    return error_response(ApiError(500, "internal server error; the server log says why"))


def guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
    """The route's failure becomes the API's 500 here: left to Starlette's handler, it is
    re-raised after the response, and uvicorn logs its traceback."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPException:
            raise
        except Exception as exc:
            return _failed(request, exc)

    return run


async def server_error(request: Request, exc: Exception) -> Response:
    return _failed(request, exc)
