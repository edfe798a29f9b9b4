"""The director (``warmroute.director``): every routing decision, tested once for both
front ends. A real registry, metrics and outlier reporter, an injected clock, requests
as the endpoint picker's source sees them (headers and a body); no gRPC, no sleeps (a
wait is released by the test, or by its queue timeout's timer).

Per-feature behaviour lives beside this file: ``test_director_priority.py`` (bands,
fairness, displacement), ``test_director_tokens.py`` (pricing, budgets, refunds),
``test_director_admission.py`` (unmeetable waits), and the affinity tests below.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from warmroute.director import Admission, Director, OutlierReporter, Request
from warmroute.director.admission import Rule
from warmroute.errors import (
    NoEligibleEndpoint,
    NotServing,
    QueueFull,
    QueueTimeout,
    RequestRejected,
    UnknownModel,
)
from warmroute.metrics import Metrics
from warmroute.request.source import PickedRequest
from warmroute.state import Lease, Phase, PoolSpec, Registry, ReplicaUpsert
from warmroute.state.affinity import AffinitySpec
from warmroute.state.outlier import Outcome, OutlierSpec
from warmroute.state.tokens import TokenSpec

A, B, C = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Timer:
    def cancel(self) -> None:
        pass


class Env:
    """A director over a registry of ``specs``, with what it reports kept for asserts."""

    def __init__(self, *specs: PoolSpec, rules: dict[str, Rule] | None = None) -> None:
        self.clock = Clock()
        ids = iter(range(1_000_000))
        self.registry = Registry(clock=self.clock, new_id=lambda: f"lease-{next(ids)}")
        self.registry.configure(specs or [PoolSpec("p", ("m",))])
        self.metrics = Metrics(self.registry.view)
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.outliers = OutlierReporter(self.registry, self.metrics, schedule=self._schedule)
        self.queued: list[str] = []
        self.director = Director(
            self.registry,
            self.metrics,
            outliers=self.outliers,
            admission=Admission(rules or {}),
            on_queued=self.queued.append,
        )

    def _schedule(self, delay: float, fn: Callable[[], None]) -> _Timer:
        self.timers.append((delay, fn))
        return _Timer()

    def warm(self, address: str, slots: int = 1, pool: str = "p") -> None:
        self.registry.apply(ReplicaUpsert(pool, address, slots, Phase.WARM))

    def lease(self, request_id: str, **kw: object) -> asyncio.Task[Lease]:
        """The director's decision for a request, as a task (it may wait)."""
        return asyncio.ensure_future(self.director.lease(request(request_id, **kw)))

    def counted(self, outcome: str, pool: str = "p") -> float:
        value = self.metrics.registry.get_sample_value(
            "warmroute_requests_total", {"pool": pool, "outcome": outcome}
        )
        return value or 0.0

    def sample(self, name: str, pool: str = "p") -> float:
        return self.metrics.registry.get_sample_value(name, {"pool": pool}) or 0.0

    def waiting(self, pool: str = "p") -> list[str]:
        return [w.request_id for w in self.registry.pools[pool].queue]


def headers(values: dict[str, str]) -> ep.HttpHeaders:
    msg = ep.HttpHeaders()
    for key, value in values.items():
        msg.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    return msg


def request(
    request_id: str,
    *,
    pool: str = "p",
    model: str | None = "m",
    header: dict[str, str] | None = None,
    body: object = None,
    subset: Iterable[str] | None = None,
) -> Request:
    """A request as a front end hands it over: its headers and JSON body (if any)."""
    raw = None if body is None else json.dumps(body).encode()
    source = PickedRequest(headers(header or {}), raw)
    hint = None if subset is None else tuple(subset)
    return Request(request_id, pool, model, hint, source)


async def settled() -> None:
    """Let every task that can run, run (a grant is delivered through a future)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- the decision ----------------------------------------------------------------------


async def test_a_free_replica_is_leased_at_once_and_the_decision_is_recorded() -> None:
    env = Env()
    env.warm(A)
    lease = await env.lease("r1")
    assert (lease.address, lease.request_id, lease.pool.name) == (A, "r1", "p")
    assert env.queued == []  # no demand reported: it did not wait
    assert env.sample("warmroute_decision_seconds_count") == 1
    assert env.sample("warmroute_queue_wait_seconds_sum") == 0.0


async def test_a_request_waits_for_the_next_freed_slot_and_reports_demand() -> None:
    env = Env()
    env.warm(A)
    first = await env.lease("first")
    second = env.lease("second")
    await settled()
    assert env.waiting() == ["second"] and env.queued == ["p"]
    assert env.director.finish(first, "success", Outcome.SUCCESS, 0.1)
    got = await asyncio.wait_for(second, 5)
    assert got.address == A and got.request_id == "second"
    assert env.sample("warmroute_queue_wait_seconds_count") == 2


async def test_a_standby_refuses_everything_with_503() -> None:
    env = Env()
    env.warm(A)
    env.director.serving = False
    with pytest.raises(NotServing) as refused:
        await env.lease("r")
    assert refused.value.http_status == 503 and refused.value.retry_after
    with pytest.raises(NotServing):
        env.director.check_serving()
    assert env.registry.view().leases == 0


async def test_a_pool_removed_since_the_front_end_chose_it_is_refused() -> None:
    env = Env()
    with pytest.raises(UnknownModel):
        await env.lease("r", pool="gone")


async def test_a_full_queue_refuses_at_once() -> None:
    env = Env(PoolSpec("p", ("m",), max_waiting=0))
    env.warm(A)
    await env.lease("busy")
    with pytest.raises(QueueFull):
        await env.lease("r")


async def test_a_wait_times_out_after_the_queue_timeout() -> None:
    env = Env(PoolSpec("p", ("m",), queue_timeout=0.05))
    env.warm(A)
    await env.lease("busy")
    with pytest.raises(QueueTimeout) as refused:
        await asyncio.wait_for(env.lease("late"), 5)
    assert "0.05s" in refused.value.message
    assert env.waiting() == []


async def test_a_cancelled_wait_leaves_no_waiter_and_no_lease() -> None:
    env = Env()
    env.warm(A)
    busy = await env.lease("busy")
    gone = env.lease("gone")
    await settled()
    assert env.waiting() == ["gone"]
    gone.cancel()
    await settled()
    assert env.waiting() == [] and gone.cancelled()
    busy.release()
    assert env.registry.view().leases == 0  # the freed slot went to nobody


async def test_a_lease_granted_as_its_requester_leaves_is_given_back() -> None:
    env = Env()
    env.warm(A)
    busy = await env.lease("busy")
    gone = env.lease("gone")
    await settled()
    busy.release()  # granted to "gone" now; its task has not run yet...
    gone.cancel()  # ...and is cancelled before it does
    await settled()
    assert gone.cancelled()
    assert env.registry.view().leases == 0


# -- subsets (a gateway's hint) --------------------------------------------------------


async def test_a_subset_limits_the_pick_and_a_bare_ip_names_its_replicas() -> None:
    env = Env()
    for address in (A, B, C):
        env.warm(address)
    assert (await env.lease("r1", subset=[B])).address == B
    assert (await env.lease("r2", subset=["10.0.0.3"])).address == C
    waiting = env.lease("r3", subset=[B, C])  # both busy: it waits, A stays free
    await settled()
    assert env.waiting() == ["r3"]
    waiting.cancel()


async def test_a_subset_nothing_in_which_can_serve_is_refused() -> None:
    env = Env()
    env.warm(A)
    for hint in ([], ["192.0.2.1:80"], ["nonsense"]):
        with pytest.raises(NoEligibleEndpoint):
            await env.lease("r", subset=hint)
    assert env.waiting() == []


# -- affinity: one rule, whatever the front end and whatever else the pool has ----------------


SESSION = AffinitySpec(session_header="x-session-id", block_chars=16, max_blocks=8)


@pytest.mark.parametrize(
    "tokens", [None, TokenSpec(10_000, default_max_tokens=10)], ids=["slots", "tokens"]
)
async def test_sessions_and_prompts_stick_to_their_replica(tokens: TokenSpec | None) -> None:
    """The two front ends once differed here: with a token budget one ignored the hint,
    the other remembered it only after a wait. Now every pool applies and remembers it."""
    spec = PoolSpec("p", ("m",), policy="prefix_affinity", affinity=SESSION, tokens=tokens)
    env = Env(spec)
    for address in (A, B, C):
        env.warm(address, slots=4)
    alice = {"x-session-id": "alice"}
    first = await env.lease("a1", header=alice)
    again = [await env.lease(f"a{i}", header=alice) for i in range(2, 4)]
    assert {lease.address for lease in again} == {first.address}
    prompt = {"prompt": "a long shared system prompt " * 4}
    bob = await env.lease("b1", body=prompt)
    assert bob.address != first.address  # least loaded: alice's replica is busier
    assert (await env.lease("b2", body=prompt)).address == bob.address  # the prefix


async def test_a_request_that_waited_is_remembered_for_its_replica() -> None:
    spec = PoolSpec("p", ("m",), policy="prefix_affinity", affinity=SESSION)
    env = Env(spec)
    env.warm(A)
    env.warm(B)
    held = [await env.lease("h1"), await env.lease("h2")]
    waiting = env.lease("w", header={"x-session-id": "carol"})
    await settled()
    held[1].release()
    granted = await asyncio.wait_for(waiting, 5)
    memory = env.registry.pools["p"].affinity
    assert memory is not None and memory.session_of("carol") == granted.address


# -- the end of a request, and refusals ------------------------------------------------


async def test_finish_counts_for_the_replica_before_its_slot_is_freed() -> None:
    outlier = OutlierSpec(consecutive_failures=2, failure_ratio=None)
    env = Env(PoolSpec("p", ("m",), outlier=outlier))
    env.warm(A)
    env.warm(B)
    first = await env.lease("f1", subset=[A])
    assert env.director.finish(first, "upstream_error", Outcome.FAILURE, 0.01)
    second = await env.lease("f2", subset=[A])
    waiting = env.lease("w1", subset=[A])  # only A: it waits for A's slot
    other = await env.lease("o1")  # B, busy now
    await settled()
    assert env.waiting() == ["w1"]
    # Its second failure in a row ejects it *before* its slot frees: the waiter stays.
    assert env.director.finish(second, "upstream_error", Outcome.FAILURE, 0.01)
    await settled()
    assert env.waiting() == ["w1"] and not waiting.done()
    assert env.registry.pools["p"].replicas[A].held
    assert env.counted("upstream_error") == 2
    assert env.sample("warmroute_request_duration_seconds_count") == 2
    # A second finish of the same lease changes nothing.
    assert not env.director.finish(second, "success", Outcome.SUCCESS, 0.01)
    assert env.counted("success") == 0
    waiting.cancel()
    other.release()


async def test_a_refusal_is_counted_and_logged_once_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = Env()
    caplog.set_level(logging.DEBUG, logger="warmroute")
    env.director.refused(QueueFull("the queue is full"), "r-9", "p")
    env.director.refused(UnknownModel("no such model"), "r-10", None)
    assert env.counted("rejected_queue_full") == 1
    assert env.counted("rejected_unknown_model", pool="none") == 1
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in lines] == [
        "request r-9 pool p rejected_queue_full: the queue is full",
        "request r-10 pool none rejected_unknown_model: no such model",
    ]
    assert all(r.levelno == logging.INFO for r in lines)


async def test_every_decision_is_one_debug_line_naming_request_and_replica(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = Env()
    env.warm(A)
    caplog.set_level(logging.DEBUG, logger="warmroute.director.director")
    await env.lease("r-1")
    (line,) = [r for r in caplog.records if "->" in r.msg]
    assert isinstance(line.args, tuple) and line.args[:2] == ("r-1", A)


async def test_admission_refuses_an_unmeetable_wait_after_reporting_demand() -> None:
    env = Env(PoolSpec("p", ("m",), queue_timeout=30.0), rules={"p": Rule(cold_start=None)})
    env.warm(A)
    learn = await env.lease("learn")  # one request of 20 s: the service time it learns
    env.clock.now += 20
    env.director.finish(learn, "success", Outcome.SUCCESS, 20.0)
    await env.lease("hold")
    queued = env.lease("queued")  # predicted 20 s, within 30 s: it waits
    await settled()
    with pytest.raises(QueueTimeout) as refused:  # predicted 40 s and no replica coming
        await env.lease("late")
    assert refused.value.retry_after is not None and refused.value.retry_after >= 39
    assert env.waiting() == ["queued"]  # it never queued
    assert env.queued == ["p", "p"]  # both reported demand (the autoscaler may help)
    queued.cancel()


def test_request_rejected_is_the_only_error_the_director_raises() -> None:
    # The front ends translate exactly this tree (``warmroute.request.responses``).
    for error in (NotServing, UnknownModel, NoEligibleEndpoint, QueueFull, QueueTimeout):
        assert issubclass(error, RequestRejected)
