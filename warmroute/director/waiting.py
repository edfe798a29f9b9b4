"""Waiting for a lease: the async wrapper around the core's synchronous leasing."""

from __future__ import annotations

import asyncio

from warmroute.errors import Displaced, QueueTimeout
from warmroute.state import Ask, EndReason, Lease, Pool


async def acquire(pool: Pool, ask: Ask) -> Lease:
    """A lease on ``pool`` for ``ask``, waiting in its queue if no slot is free.

    Raises QueueFull at once if the queue (or the band) is at its bound, RequestTooLarge
    if its tokens could never fit, QueueTimeout after the pool's (or the band's) queue
    timeout, Displaced if a higher band's request takes its place while it waits. If the
    calling task is cancelled (Envoy reset the stream: the client left), the waiter is
    withdrawn, or a lease granted in the same instant is released, so nothing leaks.
    """
    lease = pool.try_acquire(ask)
    if lease is not None:
        return lease
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Lease] = loop.create_future()

    def on_grant(lease: Lease) -> bool:
        if fut.done():  # cancelled: the requester is gone, pass the slot on
            return False
        fut.set_result(lease)
        return True

    def on_timeout() -> None:
        if not fut.done():
            fut.set_exception(_timeout(pool, waiter.deadline - waiter.enqueued_at))

    def on_displaced() -> None:
        if not fut.done():
            fut.set_exception(
                Displaced(f"a higher-priority request took this one's place in {pool.name!r}")
            )

    waiter = pool.enqueue(ask, on_grant, on_timeout=on_timeout, on_displaced=on_displaced)
    if waiter.lease is not None:  # granted inside enqueue
        return waiter.lease

    def on_timer() -> None:
        if pool.mark_timed_out(waiter):
            on_timeout()

    # The wait the pool gave it: the queue timeout, or its band's.
    timer = loop.call_later(waiter.deadline - waiter.enqueued_at, on_timer)
    try:
        return await fut
    except asyncio.CancelledError:
        if not pool.cancel(waiter) and waiter.lease is not None:
            # Granted between the cancellation and now: give the slot back.
            waiter.lease.release(EndReason.CANCELLED)
        raise
    finally:
        timer.cancel()


def _timeout(pool: Pool, wait: float) -> QueueTimeout:
    return QueueTimeout(f"no free replica in pool {pool.name!r} within {wait:g}s")
