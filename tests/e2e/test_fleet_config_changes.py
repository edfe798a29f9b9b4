"""The operator's sequence on a running fleet (issue 13), with two real Envoys and a canary.

Traffic flows the whole time while the config file changes step by step: add a pool, change
a route timeout, move a busy replica to another pool, add a model alias, remove a pool, write
an invalid file, make a final change. Each step is written to the file, reloaded, and waited
on until both Envoys' admin endpoints show it (the canary first, the other after the soak).

What must hold: a replica moved while its slots are full never receives a request beyond them
and serves its new pool once the old pool's requests end; a removed pool's model gets 200 or an
immediate clean 404, never a queue timeout; the untouched model never fails; nothing is left
leased at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet import (
    Answer,
    Fleet,
    Traffic,
    client_session,
    envoy_stats,
    start_fleet,
    start_sim,
)
from tests.helpers import wait_for
from warmroute.sim.replica import SimReplica
from warmroute.xds.resources import pool_cluster_name

STEADY, ALPHA, BETA, ALIAS, GONE = "steady-model", "alpha-model", "beta-model", "beta-alias", "gone"
HOLD = {"x-sim-service-ms": "30000"}  # far beyond the test: released by ending the request


def pool(
    name: str,
    models: list[str],
    replicas: list[SimReplica],
    timeout: float = 30.0,
    slots: int = 2,
) -> dict[str, Any]:
    return {
        "name": name,
        "models": models,
        "slots": slots,
        "max_request_seconds": timeout,
        # Long: a request stranded in a queue shows as a 503 queue_timeout or a test timeout.
        "queue": {"timeout_seconds": 20},
        "probe": {"path": "/health", "interval_seconds": 0.05},
        "replicas": [r.address for r in replicas],
    }


@pytest.fixture
async def parts() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Everything a test starts registers its stop here; unwound whatever the test did."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


def body_model(sim: SimReplica, after_seq: int) -> list[str]:
    """Models of the requests ``sim`` received after request number ``after_seq``."""
    out = []
    for entry in sim.received():
        if entry.seq > after_seq:
            assert entry.body is not None
            out.append(json.loads(entry.body)["model"])
    return out


def count(traffic: Traffic, model: str) -> int:
    return len(traffic.of(model))


async def more_answers(traffic: Traffic, model: str, n: int, timeout: float = 20.0) -> None:
    """Wait until ``n`` more answers for ``model`` came back (traffic still flows)."""
    want = count(traffic, model) + n

    def enough() -> bool:
        traffic.check()
        return count(traffic, model) >= want

    await wait_for(enough, timeout, what=f"{n} more {model}")


async def no_cluster(fleet: Fleet) -> dict[str, int]:
    """Per Envoy, requests it answered 503 because their route's cluster was gone."""
    name = "http.warmroute.no_cluster"
    return {n: (await envoy_stats(e.admin, name)).get(name, 0) for n, e in fleet.envoys.items()}


def not_clean(answers: list[Answer], allowed: set[tuple[int, str | None]]) -> list[Answer]:
    return [a for a in answers if (a.status, a.code) not in allowed]


@pytest.mark.parametrize("variant", ["delta", "sotw"])
async def test_operator_sequence_on_a_running_fleet(
    variant: str, tmp_path: Path, parts: contextlib.AsyncExitStack
) -> None:
    s1, s2 = [await start_sim(parts, slots=2, service_ms=30, seed=i) for i in (1, 2)]
    r, q = [await start_sim(parts, slots=2, service_ms=40, seed=i) for i in (3, 4)]
    p = await start_sim(parts, slots=2, service_ms=100, seed=5)
    g = await start_sim(parts, slots=2, service_ms=30, seed=6)
    sims = [s1, s2, r, q, p, g]
    steady = pool("steady", [STEADY], [s1, s2])
    alpha = pool("alpha", [ALPHA], [r, q])
    gone = pool("gone", [GONE], [g])
    fleet: Fleet = await start_fleet(
        parts, tmp_path / "warmroute.yaml", [steady, alpha, gone], variant=variant, soak_seconds=0.5
    )
    plane = fleet.plane
    traffic = Traffic(fleet.url)
    parts.push_async_callback(traffic.close)
    traffic.start(STEADY, workers=2)
    traffic.start(ALPHA)
    traffic.start(GONE, workers=2)
    await more_answers(traffic, STEADY, 10)

    # 1. Add a pool.
    traffic.phase = "add pool"
    beta = pool("beta", [BETA], [p])
    await fleet.apply([steady, alpha, gone, beta])
    traffic.start(BETA, workers=4)  # more than its 2 slots: some always wait
    await more_answers(traffic, BETA, 8)
    assert {(a.status, a.replica) for a in traffic.of(BETA)} == {(200, p.address)}

    # 2. Change a route timeout: both Envoys' route shows it.
    traffic.phase = "route timeout"
    alpha = {**alpha, "max_request_seconds": 45.0}
    await fleet.apply([steady, alpha, gone, beta])
    for view in (await fleet.views()).values():
        assert view.routes[ALPHA] == (pool_cluster_name("alpha"), 45.0)

    # 3. Move replica r from alpha to beta while alpha's requests hold all of r's slots and
    #    beta's requests keep coming (beta has more demand than p's slots).
    await traffic.stop(ALPHA)
    traffic.phase = "move"
    await wait_for(lambda: r.stats().in_flight == q.stats().in_flight == 0, what="alpha idle")
    hold_http = client_session()
    parts.push_async_callback(hold_http.close)
    holds = [
        asyncio.create_task(traffic.ask(ALPHA, HOLD, http=hold_http), name=f"hold {i}")
        for i in range(4)  # alpha's 4 slots: 2 on r, 2 on q
    ]
    await wait_for(
        lambda: r.stats().in_flight == q.stats().in_flight == 2, what="alpha holding r and q"
    )
    held_upto = r.received()[-1].seq
    alpha = {**alpha, "replicas": [q.address]}
    beta = {**beta, "replicas": [p.address, r.address]}
    await fleet.apply([steady, alpha, gone, beta])
    # Both Envoys route beta to r now; beta keeps asking while r is still full.
    await more_answers(traffic, BETA, 10)
    assert r.stats().in_flight == 2, "alpha's requests ended early: the check proved nothing"
    assert body_model(r, held_upto) == [], "r got a request beyond its slots"
    assert r.stats().received_while_full == 0
    assert all(a.replica == p.address for a in traffic.of(BETA)), traffic.of(BETA)
    (r_in_beta,) = [
        v for pv in plane.registry.view().pools if pv.name == "beta" for v in pv.replicas
        if v.address == r.address
    ]  # fmt: skip
    assert r_in_beta.free == 0, r_in_beta  # alpha's leases count against beta's use of r
    # Alpha's requests end: beta's requests take r.
    for hold in holds:
        hold.cancel()
    await asyncio.gather(*holds, return_exceptions=True)
    await wait_for(
        lambda: any(a.replica == r.address for a in traffic.of(BETA)), what="beta served by r"
    )
    assert BETA in body_model(r, held_upto), r.received()
    assert set(body_model(r, held_upto)) == {BETA}
    assert r.stats().received_while_full == 0
    traffic.phase = "moved"
    traffic.start(ALPHA)  # q alone serves alpha now
    await more_answers(traffic, ALPHA, 3)
    assert {a.replica for a in traffic.of(ALPHA, "moved")} == {q.address}

    # 4. Add a model alias: it routes to its pool on both Envoys.
    traffic.phase = "alias"
    beta = {**beta, "models": [BETA, ALIAS]}
    await fleet.apply([steady, alpha, gone, beta])
    for view in (await fleet.views()).values():
        assert view.routes[ALIAS] == (pool_cluster_name("beta"), 30.0)
    alias_answers = [await traffic.ask(ALIAS) for _ in range(20)]
    assert {(a.status, a.replica in {p.address, r.address}) for a in alias_answers} == {(200, True)}

    # 5. Remove a pool while its model has traffic: 200 (an Envoy still on the old version)
    #    or a clean 404 (one on the new), never a queue timeout.
    #    A longer soak for this step keeps the two Envoys on different versions long enough
    #    to see both answers.
    traffic.phase = "remove"
    await fleet.reload([steady, alpha, beta], soak_seconds=3.0)
    await wait_for(
        lambda: any(a.code == "unknown_model" for a in traffic.of(GONE, "remove")),
        what="the canary answering 404 for the removed pool",
    )
    canary_switched = traffic.sent
    await wait_for(
        lambda: any(a.status == 200 and a.seq >= canary_switched for a in traffic.of(GONE)),
        what="the other Envoy, still on the old version, serving the removed pool",
    )
    await fleet.wait_converged()
    traffic.phase = "removed"
    await more_answers(traffic, GONE, 6)
    await traffic.stop(GONE)
    # Every answer for the removed model, whenever it was sent (one sent just before the
    # reload may still be in ext_proc when its Envoy switches), not only during the step.
    answers = traffic.of(GONE)
    assert not_clean(answers, {(200, None), (404, "unknown_model")}) == [], (
        not_clean(answers, {(200, None), (404, "unknown_model")}),
        await no_cluster(fleet),
    )
    after = traffic.of(GONE, "removed")
    assert not_clean(after, {(404, "unknown_model")}) == [], after

    # 6. An invalid file: rejected, both Envoys unchanged, traffic unaffected.
    traffic.phase = "invalid"
    before = await fleet.views()
    stable = plane.rollout.status()["stable"]
    duplicate = pool("dup", [STEADY], [])  # a model served by two pools
    await asyncio.to_thread(fleet.write, [steady, alpha, beta, duplicate])
    assert not await plane.reload_from_file()
    assert fleet.metric("warmroute_config_reloads_total", result="invalid") >= 1
    await more_answers(traffic, STEADY, 10)
    await more_answers(traffic, BETA, 5)
    assert await fleet.views() == before
    assert plane.rollout.status()["stage"] == "stable"
    assert plane.rollout.status()["stable"] == stable

    # 7. A final valid change converges: the alias goes, beta's timeout changes.
    traffic.phase = "final"
    beta = {**beta, "models": [BETA], "max_request_seconds": 60.0}
    await fleet.apply([steady, alpha, beta])
    assert (await traffic.ask(ALIAS)).code == "unknown_model"
    await more_answers(traffic, BETA, 5)

    traffic.phase = "end"
    for model in (STEADY, ALPHA, BETA):
        await traffic.stop(model)
    # The untouched model never failed, on either Envoy.
    assert not_clean(traffic.of(STEADY), {(200, None)}) == []
    assert not_clean(traffic.of(ALPHA) + traffic.of(BETA), {(200, None)}) == []
    for node, envoy in fleet.envoys.items():
        cluster = await envoy_stats(envoy.admin, f"cluster.{pool_cluster_name('steady')}.")
        assert cluster.get(f"cluster.{pool_cluster_name('steady')}.upstream_rq_2xx", 0) > 0, node
        http = await envoy_stats(envoy.admin, "http.warmroute.")
        assert http.get("http.warmroute.downstream_rq_5xx", 0) == 0, (node, http)
    # Nothing left leased or waiting; no replica ever got more than its slots.
    await wait_for(
        lambda: (
            plane.registry.view().leases == 0
            and all(pv.waiting == 0 for pv in plane.registry.view().pools)
        ),
        what="no lease and no waiter left",
    )
    state = await fleet.admin_state()
    assert state["leases"] == 0
    assert {s.address: s.stats().received_while_full for s in sims} == {s.address: 0 for s in sims}
    assert fleet.metric("warmroute_requests_total", outcome="rejected_queue_timeout") == 0
    assert fleet.metric("warmroute_leases_expired_total") == 0


@pytest.mark.parametrize("variant", ["delta", "sotw"])
async def test_a_request_routed_while_its_pool_is_removed_gets_200_or_a_clean_404(
    variant: str, tmp_path: Path, parts: contextlib.AsyncExitStack
) -> None:
    """A request that entered Envoy before its pool was removed, and was still waiting for
    its slot when the removal reached Envoy, must be served or answered a clean 404.

    Envoy fixes a request's route table when the request starts: before the fix (5d11135)
    the pool's cluster was deleted right after the route, so once warmroute granted the
    waiter its slot Envoy answered 503 cluster_not_found with an empty body (both variants,
    every run). Now the cluster stays until the pool's last request ended."""
    main = await start_sim(parts, slots=1, service_ms=10, seed=1)
    g = await start_sim(parts, slots=1, service_ms=10, seed=2)
    keep = pool("main", [STEADY], [main], slots=1)
    gone = {**pool("gone", [GONE], [g], slots=1), "queue": {"timeout_seconds": 5}}
    fleet = await start_fleet(
        parts, tmp_path / "warmroute.yaml", [keep, gone], variant=variant, soak_seconds=0.0
    )
    traffic = Traffic(fleet.url)
    parts.push_async_callback(traffic.close)
    http = client_session()
    parts.push_async_callback(http.close)
    holder = asyncio.create_task(traffic.ask(GONE, HOLD, http=http))  # takes g's only slot
    await wait_for(lambda: g.stats().in_flight == 1, what="g busy")
    waiter = asyncio.create_task(traffic.ask(GONE, http=http))  # waits in warmroute's queue
    await wait_for(
        lambda: any(p.name == "gone" and p.waiting == 1 for p in fleet.plane.registry.view().pools),
        what="a request waiting for g",
    )
    await fleet.reload([keep])
    await fleet.wait_converged(routes_only=True)  # no Envoy routes the model any more
    holder.cancel()  # g's slot frees: the waiter gets it
    await asyncio.gather(holder, return_exceptions=True)
    answer = await asyncio.wait_for(waiter, 30)
    assert (answer.status, answer.code) in {(200, None), (404, "unknown_model")}, (
        answer,
        await no_cluster(fleet),
    )
    # Drained: a new version drops the cluster from both Envoys; nothing is left leased.
    await fleet.wait_converged()
    assert fleet.plane.registry.view().leases == 0
    assert g.stats().received_while_full == 0
