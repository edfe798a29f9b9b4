"""Priority bands through the director, once for both front ends: the band header, the
model's band and the default choose a request's band, the fairness header its lane; a
full queue displaces the newest waiter of the lowest band below (429 ``displaced``);
freed slots go to the higher band first; each band waits its own timeout. The queue's
order itself is the core's (tests/unit/test_state_priority.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_director import A, Env, settled
from warmroute.errors import Displaced, QueueTimeout
from warmroute.state import Lease, PoolSpec
from warmroute.state.outlier import Outcome
from warmroute.state.priority import MAX_KEY_LEN, BandSpec, PrioritySpec


def _ranked(*bands: BandSpec, max_waiting: int = 3, **kw: object) -> PoolSpec:
    priority = PrioritySpec(
        bands,
        default=len(bands) - 1,
        header="x-priority",
        model_bands=(("chat", 0),),
        fairness_header="x-tenant",
    )
    return PoolSpec("p", ("m", "chat"), max_waiting=max_waiting, priority=priority, **kw)  # type: ignore[arg-type]


BANDS = (BandSpec("interactive"), BandSpec("batch"))


async def test_bands_order_the_queue_and_a_full_queue_displaces_batch() -> None:
    env = Env(_ranked(*BANDS))
    env.warm(A)
    busy = await env.lease("busy")
    asks = {
        "b1": {"header": {"x-tenant": "t1"}},  # no band header, model m: the default, batch
        "b2": {"header": {"x-priority": "no-such-band"}},  # unknown: the default
        "b3": {"header": {"x-priority": "batch"}},
        "i1": {"header": {"x-priority": "interactive"}},  # the queue is full: displaces b3
        "i2": {"model": "chat"},  # chat's band: displaces b2
    }
    tasks: dict[str, asyncio.Task[Lease]] = {}
    for name, kw in asks.items():
        tasks[name] = env.lease(name, **kw)  # type: ignore[arg-type]
        await settled()
    for displaced in ("b3", "b2"):
        with pytest.raises(Displaced) as refused:
            await tasks[displaced]
        assert refused.value.http_status == 429 and refused.value.retry_after
    assert env.waiting() == ["b1", "i1", "i2"]
    assert env.registry.pools["p"].counters.displaced == 2
    # Each end hands the slot to the next in band order: i1, i2, then b1.
    order = []
    held = busy
    for _ in range(3):
        env.director.finish(held, "success", Outcome.SUCCESS, 0.1)
        await settled()
        (held,) = env.registry.leases.values()
        order.append(held.request_id)
    assert order == ["i1", "i2", "b1"]
    held.release()


async def test_tenants_of_a_band_take_turns() -> None:
    env = Env(_ranked(*BANDS, max_waiting=10))
    env.warm(A)
    busy = await env.lease("busy")
    names = ["t1-a", "t1-b", "t1-c", "t2-a", "t2-b"]
    tasks = [env.lease(n, header={"x-tenant": n[:2]}) for n in names]
    await settled()
    order = []
    held = busy
    for _ in names:
        held.release()
        await settled()
        (held,) = env.registry.leases.values()
        order.append(held.request_id)
    assert order == ["t1-a", "t2-a", "t1-b", "t2-b", "t1-c"]
    held.release()
    await asyncio.gather(*tasks)


async def test_a_fairness_key_is_cut_and_the_first_header_wins() -> None:
    env = Env(_ranked(*BANDS, max_waiting=10))
    env.warm(A)
    await env.lease("busy")
    long_key = "k" * (MAX_KEY_LEN + 50)
    waiting = env.lease("w", header={"x-tenant": long_key, "x-priority": "interactive"})
    await settled()
    (waiter,) = env.registry.pools["p"].queue
    assert waiter.lane == (0, "k" * MAX_KEY_LEN)
    waiting.cancel()


async def test_each_band_times_out_on_its_own_timeout() -> None:
    bands = (BandSpec("interactive", queue_timeout=0.05), BandSpec("batch", queue_timeout=60))
    env = Env(_ranked(*bands, max_waiting=10))
    env.warm(A)
    await env.lease("busy")
    batch = env.lease("b")
    await settled()
    with pytest.raises(QueueTimeout) as refused:
        await asyncio.wait_for(env.lease("i", header={"x-priority": "interactive"}), 5)
    assert "0.05s" in refused.value.message
    assert env.waiting() == ["b"] and not batch.done()  # batch waits its own 60 s
    batch.cancel()
