"""The simulated replica's token budget: a request that would go over it is refused and
counted, so end-to-end tests can prove warmroute never sends a replica more tokens than
it holds. A real server on localhost, a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math

import aiohttp

from tests.helpers import wait_for
from warmroute.sim import ServiceTime, SimReplica


def _body(max_tokens: int) -> bytes:
    return json.dumps({"model": "m1", "prompt": "hello", "max_tokens": max_tokens}).encode()


async def test_a_request_over_the_token_budget_is_refused_and_counted() -> None:
    replica = SimReplica(4, 0.0, ServiceTime("fixed", 20.0), 1, "m1")
    replica.set_token_budget(100, chars_per_token=4, default_max_tokens=10)
    port = await replica.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/v1/completions"
    big = _body(60)
    cost = math.ceil(len(big) / 4) + 60
    try:
        async with aiohttp.ClientSession() as http:

            async def post(body: bytes, **headers: str) -> int:
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    return r.status

            holder = asyncio.create_task(post(big, **{"x-sim-service-ms": "60000"}))
            await wait_for(lambda: replica.stats().in_flight == 1, what="the big one runs")
            assert replica.stats().tokens_in_flight == cost
            assert await post(big) == 503  # a free slot, but not the tokens
            small = _body(100 - cost - math.ceil(len(_body(0)) / 4))
            assert await post(small) == 200  # exactly what is left fits
            stats = replica.stats()
            assert (stats.received_over_tokens, stats.received_while_full) == (1, 0)
            assert stats.max_tokens_in_flight == 100
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
            await wait_for(lambda: replica.stats().in_flight == 0, what="the big one ends")
            stats = replica.stats()
            assert stats.tokens_in_flight == 0
            assert stats.received == (
                stats.received_over_tokens + stats.completed + stats.cancelled + stats.in_flight
            )
    finally:
        await replica.stop()
