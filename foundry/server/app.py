"""The ASGI routes (Starlette): the Messages API, count_tokens, models, health and cache stats.

Starlette rather than FastAPI: the API's shapes are checked by foundry.server.protocol
(errors must be Anthropic's, not a validation framework's), so all that is needed is
routing and streaming responses, which is what FastAPI itself sits on.

A request's HTTP status is decided before its first byte: the model's worker admits it (the
memory guard passed, the cache plan made) before the stream starts, so a 529 is a real 529
and message_start carries the real usage. A client that disconnects cancels its request,
except a greedy whole (non-streaming) reply, which waits a while for the client's retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from foundry.errors import install_hint
from foundry.server.body import read_json
from foundry.server.guard import (
    check_auth,
    error_response,
    guarded,
    http_error,
    server_error,
    service_of,
)
from foundry.server.protocol import (
    ApiError,
    message_json,
    models_json,
    parse_request,
)
from foundry.server.queue import Job, JobCancelled, QueueFull
from foundry.server.replay import keep_for_retry, replay_response
from foundry.server.service import Prepared, ServeService, api_error_for
from foundry.server.stream import (
    SSE_HEADERS,
    ContentStream,
    error_event,
    message_end,
    message_start,
    ping,
)
from foundry.usage import Usage

log = logging.getLogger(__name__)


class DisconnectWatch:
    """Notices a client that goes away while its request waits or runs."""

    def __init__(self, request: Request) -> None:
        self.task = asyncio.ensure_future(self._listen(request))

    @staticmethod
    async def _listen(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    @property
    def gone(self) -> bool:
        return self.task.done() and not self.task.cancelled()

    def close(self) -> None:
        self.task.cancel()


async def next_event(job: Job, watch: DisconnectWatch | None, timeout: float | None):
    """The job's next event; None on timeout; JobCancelled when the client went away."""
    getter = asyncio.ensure_future(job.events.get())
    waiting: set[asyncio.Future[Any]] = {getter}
    if watch is not None:
        waiting.add(watch.task)
    done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    if watch is not None and watch.gone:
        raise JobCancelled("the client disconnected")
    return None


async def create_message(request: Request) -> Response:
    service = service_of(request)
    try:
        check_auth(request, service)
        body = await read_json(request, service.settings.max_request_bytes)
        parsed = parse_request(body, service.settings.model)
        service.check_model(parsed.model_id)
        prepared = service.begin(parsed)
        reply = service.replay(prepared)
        if reply is not None:
            return replay_response(service, prepared, reply)
        await anyio.to_thread.run_sync(service.fit, prepared)
    except ApiError as exc:
        return error_response(exc)
    headers = prepared.headers()
    job = Job(prepared, asyncio.get_running_loop())
    try:
        service.queue.submit(job)
    except QueueFull as exc:
        service.reject(prepared, "rate_limit")
        error = ApiError(
            429,
            f"the model is busy: {exc.waiting} requests are waiting; retry after "
            f"{exc.retry_after_s} s",
            headers={"retry-after": str(exc.retry_after_s)},
        )
        return error_response(error, headers)
    except JobCancelled as exc:
        service.reject(prepared, "overloaded")
        return error_response(ApiError(529, exc.reason), headers)
    watch = DisconnectWatch(request)
    try:
        kind, value = await _admitted(job, watch)
    except JobCancelled:
        watch.close()
        service.queue.cancel(job, "the client disconnected")
        return Response(status_code=499)
    if kind == "error":
        watch.close()
        return error_response(api_error_for(value), headers)
    if kind == "replay":
        watch.close()
        return replay_response(service, prepared, value)
    if not prepared.parsed.stream:
        try:
            return await _whole(service, prepared, job, watch, headers)
        finally:
            watch.close()
    watch.close()  # from here Starlette's StreamingResponse watches for the disconnect
    return StreamingResponse(
        _events(service, prepared, job, value),
        media_type="text/event-stream",
        headers={**headers, **SSE_HEADERS},
    )


async def _admitted(job: Job, watch: DisconnectWatch) -> tuple[str, Any]:
    """Wait until the worker has planned the request (or failed it)."""
    while True:
        event = await next_event(job, watch, timeout=None)
        if event is not None and event[0] in ("plan", "error", "replay"):
            return event


async def _whole(
    service: ServeService, prepared: Prepared, job: Job, watch: DisconnectWatch, headers: dict
) -> Response:
    while True:
        try:
            event = await next_event(job, watch, timeout=None)
        except JobCancelled:
            if prepared.key is None:
                service.queue.cancel(job, "the client disconnected")
            else:
                keep_for_retry(service, job, prepared)
            return Response(status_code=499)
        if event is None or event[0] in ("text", "plan"):
            continue
        kind, value = event
        if kind == "error":
            return error_response(api_error_for(value), headers)
        response, stop_sequence = value  # the worker recorded it for replay
        body = message_json(
            prepared.message_id,
            prepared.parsed.model_id,
            response.content,
            response.stop_reason,
            stop_sequence,
            response.usage,
        )
        return JSONResponse(body, headers=headers)


def _plan_usage(plan: dict[str, Any]) -> Usage:
    read, write = plan["cache_read"], plan["cache_write"]
    return Usage(
        input_tokens=plan["prompt_tokens"] - read - write,
        cache_read_tokens=read,
        cache_write_5m_tokens=write,
    )


async def _events(
    service: ServeService, prepared: Prepared, job: Job, plan: dict[str, Any]
) -> AsyncIterator[bytes]:
    content = ContentStream(service.tool_tag)
    finished = False
    try:
        yield message_start(prepared.message_id, prepared.parsed.model_id, _plan_usage(plan))
        yield ping()
        while True:
            event = await next_event(job, None, timeout=service.settings.ping_interval_s)
            if event is None:  # a long prefill or a slow token: keep the connection alive
                yield ping()
                continue
            kind, value = event
            if kind == "text":
                for chunk in content.text(value):
                    yield chunk
            elif kind == "error":
                finished = True
                error = api_error_for(value)
                yield error_event(error.error_type, error.message)
                return
            elif kind == "done":
                finished = True
                response, stop_sequence = value
                chunks, received = content.finish(response.content)
                for chunk in chunks:
                    yield chunk
                for chunk in message_end(response.stop_reason, stop_sequence, response.usage):
                    yield chunk
                service.remember(prepared, response, received, stop_sequence, content.deltas)
                return
    finally:
        if not finished:  # the client went away mid-stream: stop the model
            service.queue.cancel(job, "the client disconnected")


async def count_tokens(request: Request) -> Response:
    service = service_of(request)
    try:
        check_auth(request, service)
        body = await read_json(request, service.settings.max_request_bytes)
        parsed = parse_request(body, service.settings.model, default_max_tokens=1)
        service.check_model(parsed.model_id)
        tokens = await anyio.to_thread.run_sync(service.count, parsed.request)
    except ApiError as exc:
        return error_response(exc)
    return JSONResponse({"input_tokens": tokens})


async def list_models(request: Request) -> Response:
    service = service_of(request)
    try:
        check_auth(request, service)
    except ApiError as exc:
        return error_response(exc)
    return JSONResponse(models_json(service.settings.model_name, service.stats.started_at))


async def get_model(request: Request) -> Response:
    service = service_of(request)
    try:
        check_auth(request, service)
        service.check_model(request.path_params["model_id"])
    except ApiError as exc:
        return error_response(exc)
    return JSONResponse(
        models_json(service.settings.model_name, service.stats.started_at)["data"][0]
    )


async def root(request: Request) -> Response:
    service = service_of(request)
    if request.method == "HEAD":
        return Response(status_code=200)
    return JSONResponse(
        {
            "name": "foundry serve",
            "model": service.settings.model_name,
            "api": "Anthropic Messages API",
            "endpoints": [
                "POST /v1/messages",
                "POST /v1/messages/count_tokens",
                "GET /v1/models",
                "GET /cache/stats",
                "GET /metrics",
                "GET /health",
            ],
        }
    )


async def health(request: Request) -> Response:
    service = service_of(request)
    status = "shutting_down" if service.shutting_down else "ok"
    if request.method == "HEAD":
        return Response(status_code=200 if status == "ok" else 503)
    return JSONResponse(
        {"status": status, "model": service.settings.model_name, "busy": service.queue.busy},
        status_code=200 if status == "ok" else 503,
    )


async def cache_stats(request: Request) -> Response:
    service = service_of(request)
    try:
        check_auth(request, service)
    except ApiError as exc:
        return error_response(exc)
    return JSONResponse(await anyio.to_thread.run_sync(service.cache_stats))


async def metrics(request: Request) -> Response:
    """Prometheus' text format (foundry.server.metrics); a key as for /cache/stats."""
    service = service_of(request)
    try:
        check_auth(request, service)
    except ApiError as exc:
        return error_response(exc)
    from foundry.server.metrics import CONTENT_TYPE

    # Off the event loop: the gauges read the prefix store's manifest, as /cache/stats does.
    body = await anyio.to_thread.run_sync(request.app.state.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE)


def _metrics(service: ServeService) -> Any:
    """The app's own registry, or None (and one warning) without prometheus_client."""
    try:
        from foundry.server.metrics import ServeMetrics
    except ImportError:
        log.warning("/metrics is off: prometheus_client is missing; %s", install_hint("serve"))
        return None
    return ServeMetrics(service)


def create_app(service: ServeService, *, with_metrics: bool = True) -> Starlette:
    recorder = _metrics(service) if with_metrics else None
    extra, middleware = [], []
    if recorder is not None:
        from foundry.server.metrics import MetricsMiddleware

        extra = [Route("/metrics", guarded(metrics), methods=["GET"])]
        middleware = [Middleware(MetricsMiddleware, metrics=recorder)]
    app = Starlette(
        routes=[
            Route("/v1/messages", guarded(create_message), methods=["POST"]),
            Route("/v1/messages/count_tokens", guarded(count_tokens), methods=["POST"]),
            Route("/v1/models", guarded(list_models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", guarded(get_model), methods=["GET"]),
            Route("/", guarded(root), methods=["GET", "HEAD"]),
            Route("/health", guarded(health), methods=["GET", "HEAD"]),
            Route("/cache/stats", guarded(cache_stats), methods=["GET"]),
            *extra,
        ],
        middleware=middleware,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.service = service
    app.state.metrics = recorder
    return app
