"""Token budgets through the director, once for both front ends: a request is priced
from what its source says (the body's size and its completion bound), the price is
reserved with the lease and refunded when it ends, a request over a replica's whole
budget is refused before any lease, and a request that does not fit waits for tokens to
free. How each front end reads the two numbers is tested in test_request_tokens.py; the
budget's accounting in the core in test_state_tokens.py."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from tests.unit.test_director import A, Env, request, settled
from warmroute.errors import RequestTooLarge
from warmroute.state import PoolSpec
from warmroute.state.outlier import Outcome
from warmroute.state.tokens import TokenSpec

BUDGET = 1000


def _body(max_tokens: int) -> dict[str, object]:
    return {"model": "m", "prompt": "hi", "max_tokens": max_tokens}


def _cost(max_tokens: int) -> int:
    return math.ceil(len(json.dumps(_body(max_tokens)).encode()) / 4) + max_tokens


async def test_the_body_prices_the_lease_and_the_end_refunds_it() -> None:
    env = Env(PoolSpec("p", ("m",), tokens=TokenSpec(BUDGET, default_max_tokens=10)))
    env.warm(A, slots=4)
    capacity = env.registry.capacity(A)
    assert capacity is not None
    first = await env.lease("r1", body=_body(400))
    assert capacity.tokens_leased == _cost(400) and capacity.reserved == {first.id: _cost(400)}
    # No body: the prompt counts nothing, the completion the pool's default.
    bare = await env.lease("r2")
    assert capacity.reserved[bare.id] == 10
    for lease in (first, bare):
        assert env.director.finish(lease, "success", Outcome.SUCCESS, 0.1)
    assert (capacity.tokens_leased, capacity.reserved) == (0, {})


async def test_a_request_over_the_whole_budget_is_refused_before_any_lease() -> None:
    env = Env(PoolSpec("p", ("m",), tokens=TokenSpec(BUDGET, default_max_tokens=10)))
    env.warm(A, slots=4)
    with pytest.raises(RequestTooLarge) as refused:
        await env.lease("big", body=_body(BUDGET))
    assert refused.value.http_status == 400
    assert env.registry.view().leases == 0 and env.waiting() == []
    assert env.queued == []  # refused, not demand


async def test_a_request_that_does_not_fit_waits_for_tokens_to_free() -> None:
    env = Env(PoolSpec("p", ("m",), tokens=TokenSpec(BUDGET, default_max_tokens=10)))
    env.warm(A, slots=4)  # free slots: tokens decide
    first = await env.lease("r1", body=_body(600))
    second = env.lease("r2", body=_body(600))
    await settled()
    assert env.waiting() == ["r2"] and env.queued == ["p"]
    env.director.finish(first, "success", Outcome.SUCCESS, 0.1)
    granted = await asyncio.wait_for(second, 5)
    capacity = env.registry.capacity(A)
    assert capacity is not None and capacity.reserved == {granted.id: _cost(600)}


async def test_a_pool_without_a_budget_never_reads_the_body() -> None:
    class Untouchable:
        def header(self, name: str) -> str | None:
            return None

        def prompt(self, limit: int) -> str:
            raise AssertionError("read the prompt")

        def body_size(self) -> int:
            raise AssertionError("read the body's size")

        def max_tokens(self) -> int | None:
            raise AssertionError("read max_tokens")

    env = Env()
    env.warm(A)
    plain = request("r")._replace(source=Untouchable())
    assert (await env.director.lease(plain)).address == A
