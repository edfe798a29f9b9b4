"""Token-aware slots through a real Envoy, counted at the replica.

One replica with 4 slots but a token budget that holds two big requests (prompt estimate
plus ``max_tokens``) and a few small ones. The simulated replica enforces the same budget
and counts any request that would go over it (``received_over_tokens``), so "warmroute
never handed the replica more tokens than it holds" is a counter at the replica, not a
timing. Requests are held open with a long service time and freed by their clients
leaving: the order of events is set by the test, not by the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

import aiohttp

from tests.e2e.stack import MODEL, Stack, StackFactory, client
from tests.helpers import wait_for

BUDGET = 1000
CHARS_PER_TOKEN = 4
BIG, SMALL = 400, 20  # max_tokens of each kind: two big ones fit the budget, three do not

Answer = tuple[int, dict[str, Any]]


def _body(name: str, max_tokens: int) -> bytes:
    return json.dumps({"model": MODEL, "prompt": name, "max_tokens": max_tokens}).encode()


def _cost(name: str, max_tokens: int) -> int:
    return math.ceil(len(_body(name, max_tokens)) / CHARS_PER_TOKEN) + max_tokens


async def _post(http: aiohttp.ClientSession, stack: Stack, name: str, max_tokens: int) -> Answer:
    headers = {"content-type": "application/json", "x-sim-service-ms": "60000"}
    async with http.post(
        stack.url + "/v1/completions", data=_body(name, max_tokens), headers=headers
    ) as r:
        return r.status, await r.json(content_type=None)


def _running(stack: Stack) -> list[str]:
    """The prompts (our names) of the requests the replica received, in order."""
    return [json.loads(r.body or b"{}")["prompt"] for r in stack.replicas[0].received()]


async def _leave(task: asyncio.Task[Answer]) -> None:
    """The client goes away: its request ends at the replica and its lease is released."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_replica_never_gets_more_tokens_than_its_budget(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(
        replicas=1,
        slots=4,
        pool_extra={
            "tokens": {
                "capacity": BUDGET,
                "default_max_tokens": SMALL,
                "chars_per_token": CHARS_PER_TOKEN,
            }
        },
    )
    replica = stack.replicas[0]
    replica.set_token_budget(BUDGET, chars_per_token=CHARS_PER_TOKEN, default_max_tokens=SMALL)
    await stack.wait_warm()
    pool = stack.plane.registry.pools["main"]
    assert 2 * _cost("big-0", BIG) + 2 * _cost("small-1", SMALL) <= BUDGET
    assert 3 * _cost("big-0", BIG) > BUDGET

    def at_replica(in_flight: int, waiting: int) -> bool:
        return replica.stats().in_flight == in_flight and len(pool.queue) == waiting

    async with client() as http:
        tasks = {
            f"big-{i}": asyncio.create_task(_post(http, stack, f"big-{i}", BIG)) for i in range(4)
        }
        # Four slots, but tokens for two: two run, two wait in warmroute.
        await wait_for(lambda: at_replica(2, 2), what="two big requests run, two wait")
        running = _running(stack)
        assert replica.stats().tokens_in_flight == sum(_cost(n, BIG) for n in running)

        # Head of line: a small request that would fit waits behind the big ones.
        tasks["small-1"] = asyncio.create_task(_post(http, stack, "small-1", SMALL))
        await wait_for(lambda: at_replica(2, 3), what="the small request queues")

        # One big request ends: the oldest waiting big one takes its tokens; the next big
        # one does not fit yet, so the small one behind it still waits.
        await _leave(tasks[running[0]])
        await wait_for(lambda: at_replica(2, 2), what="a waiting big request is served")
        # The other first big one ends: the last big one and the small one fit together.
        await _leave(tasks[running[1]])
        await wait_for(lambda: at_replica(3, 0), what="the last big and the small one run")

        # Small requests fill the remaining slot at once.
        tasks["small-2"] = asyncio.create_task(_post(http, stack, "small-2", SMALL))
        await wait_for(lambda: at_replica(4, 0), what="a small request takes the last slot")
        assert pool.counters.granted_immediately == 3  # the first two big ones and small-2
        assert replica.stats().tokens_in_flight == 2 * _cost("big-0", BIG) + 2 * _cost(
            "small-1", SMALL
        )
        tokens = stack.metric("warmroute_tokens_leased", pool="main")
        assert tokens == replica.stats().tokens_in_flight

        # A request no replica could ever hold: refused at once, without a lease.
        leases, received = len(stack.plane.registry.leases), replica.stats().received
        status, body = await _post(http, stack, "huge", BUDGET)
        assert status == 400
        assert body["error"]["code"] == "request_too_large_for_pool"
        assert str(BUDGET) in body["error"]["message"]
        assert (len(stack.plane.registry.leases), replica.stats().received) == (leases, received)

        for task in tasks.values():
            await _leave(task)
    await stack.wait_idle()

    stats = replica.stats()
    assert stats.received_over_tokens == 0  # never more tokens than the budget
    assert stats.received_while_full == 0  # nor more requests than the slots
    assert stats.max_tokens_in_flight <= BUDGET
    assert stats.received == 6  # four big, two small; the huge one never reached it
    assert stack.metric("warmroute_tokens_leased", pool="main") == 0
    assert (
        stack.metric("warmroute_requests_total", outcome="rejected_request_too_large_for_pool") == 1
    )
