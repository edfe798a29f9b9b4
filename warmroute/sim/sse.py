"""Server-sent events for the simulated replica: each token's event when it is due.

:func:`stream` writes a response as a model server streams one: ``text/event-stream``, one
``data: {json}`` event per token at its planned time (a :class:`Generation`), then the tail
and ``data: [DONE]`` (OpenAI's Completions and Chat). Streams whose events are ``named``
(the Responses and Messages APIs) put ``event: <type>`` before each ``data:`` line, and
those without a ``done_marker`` end without ``[DONE]``. The caller's slot is released after
the last token's service time and *before* the tail, so a router that frees its lease on the
last byte never finds the replica busy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from warmroute.sim.service_time import Generation


class Events(Protocol):
    """The ``data:`` events of one stream: ``head`` at once, one per token, ``tail`` last;
    ``named``: each event also carries ``event: <its "type">``; ``done_marker``: ``data:
    [DONE]`` ends the stream."""

    head: list[dict[str, Any]]
    tail: list[dict[str, Any]]
    named: bool
    done_marker: bool

    def token(self, index: int) -> dict[str, Any]: ...


class LegacyEvents:
    """A stream on a path that is not OpenAI's: ``{replica, model, request_id, index, text}``
    per token, nothing before or after."""

    named = False
    done_marker = True

    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info
        self.head: list[dict[str, Any]] = []
        self.tail: list[dict[str, Any]] = []

    def token(self, index: int) -> dict[str, Any]:
        return {**self._info, "index": index, "text": f" tok{index}"}


def encode(event: dict[str, Any], named: bool = False) -> bytes:
    """One SSE event: ``data: {json}``, after ``event: <its "type">`` if ``named``."""
    data = f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
    return (f"event: {event['type']}\n" + data if named else data).encode()


async def sleep_until(deadline: float) -> None:
    """Sleep until ``deadline`` on the loop's clock (at least one yield, even if past)."""
    await asyncio.sleep(deadline - asyncio.get_running_loop().time())


async def stream(
    request: web.Request,
    gen: Generation,
    events: Events,
    admitted: float,
    release: Callable[[], object],
) -> web.StreamResponse:
    """Answer ``request`` with ``events`` timed by ``gen`` from ``admitted`` (loop clock);
    call ``release`` once the service time is over, before the tail. A client that leaves
    ends the stream quietly (the caller's cleanup counts it); cancellation propagates."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        await response.prepare(request)
        named = events.named
        for event in events.head:
            await response.write(encode(event, named))
        for index in range(gen.tokens):
            await sleep_until(admitted + gen.due(index))
            await response.write(encode(events.token(index), named))
        await sleep_until(admitted + gen.service_s)
        release()
        for event in events.tail:
            await response.write(encode(event, named))
        if events.done_marker:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the disconnect surfaced in a write, not as a cancellation
    return response
