"""Unit tests of ``warmroute/director/admission.py``: a real Pool and a fake clock.

What it promises: a request is refused at once (503 queue_timeout, Retry-After = the
predicted wait rounded up) only when the predicted wait exceeds its queue timeout AND no
cold replica could serve it in time (the cold-start estimate exceeds it, the pool does not
scale, or it is at its max); never before a service time is learned; pools without a
rule always queue.
"""

from __future__ import annotations

import pytest

from warmroute.director.admission import Admission, Rule, early_reject
from warmroute.errors import QueueTimeout
from warmroute.request import responses
from warmroute.state import Phase, Pool, PoolSpec
from warmroute.state.ask import Ask

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def busy_pool(service: float, waiting: int, timeout: float = 10.0) -> Pool:
    """One warm 1-slot replica that learned ``service``, busy, ``waiting`` queued."""
    clock = FakeClock()
    ids = iter(range(10**6))
    pool = Pool(
        PoolSpec("p", ("m",), queue_timeout=timeout),
        clock=clock,
        new_id=lambda: str(next(ids)),
        leases={},
    )
    pool.upsert(A, 1, Phase.WARM)
    lease = pool.try_acquire(Ask("first"))
    assert lease is not None
    clock.now += service
    lease.release()
    assert pool.try_acquire(Ask("busy")) is not None
    for i in range(waiting):
        pool.enqueue(Ask(f"w{i}"), lambda _lease: True)
    return pool


def test_an_unmeetable_request_is_refused_with_an_honest_retry_after() -> None:
    # 5 queued ahead on one slot of 3 s: a new request starts after 6 x 3 = 18 s > 10 s.
    pool = busy_pool(3.0, 5)
    rejected = early_reject(pool, Rule(cold_start=None))
    assert isinstance(rejected, QueueTimeout)
    assert rejected.retry_after == 18.0
    assert "does not scale" in rejected.message
    answer = responses.rejected(rejected, "req-1")
    headers = {
        h.header.key: h.header.raw_value.decode()
        for h in answer.immediate_response.headers.set_headers
    }
    assert answer.immediate_response.status.code == 503
    assert headers["retry-after"] == "18"


def test_a_request_the_warm_replicas_serve_in_time_queues() -> None:
    assert early_reject(busy_pool(1.0, 5), Rule(cold_start=None)) is None  # 6 s <= 10 s


def test_a_cold_start_within_the_timeout_lets_it_queue() -> None:
    pool = busy_pool(3.0, 5)
    assert early_reject(pool, Rule(cold_start=4.0)) is None  # a new replica in 4 s
    slow = early_reject(pool, Rule(cold_start=40.0))
    assert slow is not None and "cold start takes 40s" in slow.message


def test_a_pool_at_its_max_cannot_start_one() -> None:
    rejected = early_reject(busy_pool(3.0, 5), Rule(cold_start=4.0, max_replicas=1))
    assert rejected is not None and "max replicas" in rejected.message


def test_a_loading_replica_is_coming_capacity() -> None:
    pool = busy_pool(3.0, 5)
    pool.upsert(B, 4, Phase.LOADING)  # 4 slots free once its 5 s cold start is over
    assert early_reject(pool, Rule(cold_start=5.0, max_replicas=2)) is None


def test_the_request_timeout_overrides_the_pool_one() -> None:
    assert early_reject(busy_pool(3.0, 5), Rule(None), timeout=30.0) is None


def test_nothing_is_refused_before_a_service_time_is_learned() -> None:
    pool = Pool(PoolSpec("p", ("m",)), clock=FakeClock(), new_id=lambda: "x", leases={})
    assert early_reject(pool, Rule(cold_start=None)) is None  # no replica, no prediction


def test_admission_applies_only_to_pools_with_a_rule() -> None:
    pool = busy_pool(3.0, 5)
    Admission().check(pool)  # no rule: queue
    with pytest.raises(QueueTimeout):
        Admission({"p": Rule(None)}).check(pool)


def test_rules_come_from_the_pools_that_ask_for_them() -> None:
    from warmroute.config import Config
    from warmroute.director.admission import rules_from

    cfg = Config.model_validate(
        {
            "pools": [
                {"name": "a", "models": ["a"], "queue": {"reject_when_unmeetable": True}},
                {
                    "name": "b", "models": ["b"], "queue": {"reject_when_unmeetable": True},
                    "autoscale": {"max_replicas": 3, "cold_start_seconds": 45},
                },
                {"name": "c", "models": ["c"]},
            ]
        }
    )  # fmt: skip
    assert rules_from(cfg.pools) == {"a": Rule(None, None), "b": Rule(45.0, 3)}


def test_admission_follows_the_current_config() -> None:
    from warmroute.config import Config

    def cfg(reject: bool) -> Config:
        queue = {"reject_when_unmeetable": reject}
        return Config.model_validate({"pools": [{"name": "p", "models": ["m"], "queue": queue}]})

    current = [cfg(False)]
    admission = Admission(pools=lambda: current[0].pools)
    pool = busy_pool(3.0, 5)
    admission.check(pool)  # not asked for: queue
    current[0] = cfg(True)  # a reload
    with pytest.raises(QueueTimeout):
        admission.check(pool)
    assert admission.explain(pool) == "5 ahead, predicted wait 18s"
