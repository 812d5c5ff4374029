"""Answers that do not run the model: a request answered from the response cache (as a
Message or as the events of a stream), and a whole reply kept running for the retry of a
client that left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from foundry.server.protocol import message_json
from foundry.server.queue import Job
from foundry.server.service import Prepared, ServeService
from foundry.server.stream import SSE_HEADERS, message_end, message_start, ping, replay_events
from foundry.usage import Usage

log = logging.getLogger(__name__)
RETRY_GRACE_S = 30.0  # how long a whole reply whose client left waits for the client's retry


def replay_response(service: ServeService, prepared: Prepared, reply: Any) -> Response:
    usage = Usage(cache_read_tokens=prepared.prompt_tokens, output_tokens=reply.output_tokens)
    headers = {**prepared.headers(), "x-foundry-cache": "response"}
    # The ledger row is written after the reply has gone out: a replay's whole point is speed.
    record = BackgroundTask(service.record_replay, prepared, reply)
    model_id = prepared.parsed.model_id
    if not prepared.parsed.stream:
        body = message_json(
            prepared.message_id,
            model_id,
            reply.content,
            reply.stop_reason,
            reply.stop_sequence,
            usage,
        )
        return JSONResponse(body, headers=headers, background=record)

    async def events() -> AsyncIterator[bytes]:
        yield message_start(
            prepared.message_id, model_id, Usage(cache_read_tokens=usage.cache_read_tokens)
        )
        yield ping()
        for chunk in replay_events(reply.content, reply.text_deltas):
            yield chunk
        for chunk in message_end(reply.stop_reason, reply.stop_sequence, usage):
            yield chunk

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={**headers, **SSE_HEADERS},
        background=record,
    )


def keep_for_retry(service: ServeService, job: Job, prepared: Prepared) -> None:
    """A greedy whole reply whose client left, most likely on a client timeout (Claude Code
    gives a non-streaming request 300 s, then sends it again): it runs on while a retry of
    the same request waits for it, and RETRY_GRACE_S more, and the worker records it, so
    the retry is answered from the response cache instead of starting over."""
    loop = asyncio.get_running_loop()
    log.info(
        "the client left before its whole reply; it runs on for the client's retry (%s)",
        prepared.request_id,
    )

    def check() -> None:
        if job.ended:
            return
        if service.queue.any_waiting(lambda other: other.payload.key == prepared.key):
            loop.call_later(RETRY_GRACE_S, check)
            return
        service.queue.cancel(job, "the client disconnected and no retry came")

    loop.call_later(RETRY_GRACE_S, check)
