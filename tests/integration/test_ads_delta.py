"""Incremental (delta) ADS over real gRPC: scripted clients, then a real Envoy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers import wait_for
from tests.integration.ads_client import (
    DeltaClient,
    Harness,
    cluster,
    delta_names,
    endpoints,
    envoy_scenario,
    kinds,
    listener,
    publish,
    route,
    serve,
)
from warmroute.xds.cache import EventKind
from warmroute.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with serve() as harness:
        yield harness


@pytest.fixture
async def channel(h: Harness) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(h.target) as ch:
        yield ch


def base(h: Harness, *, eds_a: str = "10.0.0.1:80", domain: str = "a.example") -> Snapshot:
    return publish(
        h.cache,
        clusters=[cluster("a"), cluster("b")],
        eds=[endpoints("a", eds_a), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", domain)],
    )


async def settled(h: Harness, channel: grpc.aio.Channel, node: str = "n1") -> DeltaClient:
    """A client that, like Envoy, subscribed CDS and LDS (wildcard), then EDS and RDS by
    name, and ACKed everything."""
    c = DeltaClient(channel, node)
    await c.request(CLUSTER)
    await c.request(LISTENER)
    assert kinds(await c.recv_ack(2)) == ["C", "L"]
    await c.request(ENDPOINT, ["a", "b"])
    await c.request(ROUTE, ["r1"])
    assert kinds(await c.recv_ack(2)) == ["E", "R"]
    return c


async def test_initial_wildcard_cds_and_lds(h: Harness, channel: grpc.aio.Channel) -> None:
    snap = base(h)
    c = DeltaClient(channel, "n1")
    await c.request(CLUSTER)  # no names: the legacy wildcard
    cds = await c.recv()
    assert (cds.type_url, cds.system_version_info) == (CLUSTER, snap.version(CLUSTER))
    assert delta_names(cds) == {"a", "b"}
    assert {r.name: r.version for r in cds.resources} == {
        n: r.version for n, r in snap.of_type(CLUSTER).items.items()
    }
    assert list(cds.removed_resources) == []
    await c.ack(cds)
    await c.request(LISTENER, ["*"])
    lds = await c.recv()
    assert delta_names(lds) == {"l1"}
    await c.ack(lds)
    await wait_for(lambda: len(h.recorder.of(EventKind.ACK)) == 2, what="two ACKs")
    assert h.recorder.of(EventKind.ACK, CLUSTER)[0].version == snap.version(CLUSTER)
    assert h.server.connected_nodes == {"n1": 1}
    assert await c.barrier() == []


async def test_empty_wildcard_is_answered_so_envoy_can_initialise(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    c = DeltaClient(channel, "n1")
    await c.request(CLUSTER)
    cds = await c.recv()
    assert (cds.type_url, list(cds.resources)) == (CLUSTER, [])


async def test_named_subscriptions(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = DeltaClient(channel, "n1")
    await c.request(ENDPOINT, ["zz"])  # does not exist: not answered
    assert await c.barrier() == []
    await c.request(ENDPOINT, ["a"])
    eds = await c.recv()
    assert delta_names(eds) == {"a"}
    await c.ack(eds)
    await c.request(ROUTE, ["r1"])
    assert delta_names(await c.recv()) == {"r1"}
    snap = publish(  # zz appears: it was asked for, so it is sent
        h.cache,
        clusters=[cluster("a")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("zz", "10.0.0.9:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    eds2 = await c.recv()
    assert (eds2.type_url, delta_names(eds2)) == (ENDPOINT, {"zz"})
    assert eds2.system_version_info == snap.version(ENDPOINT)


async def test_only_changed_resources_are_sent(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    snap = base(h, eds_a="10.0.0.7:80")
    eds = await c.recv()
    assert (eds.type_url, delta_names(eds)) == (ENDPOINT, {"a"})
    assert eds.system_version_info == snap.version(ENDPOINT)
    await c.ack(eds)
    await wait_for(
        lambda: any(
            e.version == snap.version(ENDPOINT) for e in h.recorder.of(EventKind.ACK, ENDPOINT)
        ),
        what="ACK of the new EDS version",
    )
    base(h, eds_a="10.0.0.7:80")  # unchanged: nothing
    assert await c.barrier() == []


async def test_nack_is_reported_and_not_repushed(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    bad = base(h, domain="bad.example")
    rds = await c.recv()
    await c.nack(rds, "bad route")
    await wait_for(lambda: bool(h.recorder.of(EventKind.NACK)), what="NACK reported")
    nack = h.recorder.of(EventKind.NACK)[0]
    assert (nack.type_url, nack.version, nack.error) == (ROUTE, bad.version(ROUTE), "bad route")
    assert await c.barrier() == []
    fixed = base(h, domain="good.example")
    again = await c.recv()
    assert (again.type_url, again.system_version_info) == (ROUTE, fixed.version(ROUTE))


async def test_stale_nonce_is_no_ack_but_subscriptions_apply(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    base(h)
    c = await settled(h, channel)
    base(h, eds_a="10.0.0.7:80")
    eds = await c.recv()
    # Old nonce: neither an ACK nor a NACK of the push in flight...
    await c.request(ROUTE, nonce="not-a-nonce", error="late")
    # ...but a subscription change is a delta and is never dropped.
    await c.request(ENDPOINT, unsubscribe=["b"], nonce="not-a-nonce")
    await c.ack(eds)
    await wait_for(lambda: len(h.recorder.of(EventKind.ACK, ENDPOINT)) == 2, what="ACK")
    assert h.recorder.of(EventKind.NACK) == []
    snap = publish(
        h.cache,
        clusters=[cluster("a"), cluster("b")],
        eds=[endpoints("a", "10.0.0.7:80"), endpoints("b", "10.0.0.8:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    # b changed, but it was unsubscribed: only the new version is announced.
    (announce,) = await c.barrier()
    assert (announce.type_url, list(announce.resources)) == (ENDPOINT, [])
    assert announce.system_version_info == snap.version(ENDPOINT)


async def test_full_update_goes_out_in_order(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    snap = publish(
        h.cache,
        clusters=[cluster("a"), cluster("b"), cluster("c")],
        eds=[endpoints("a", "10.0.0.5:80"), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 9090)],
        routes=[route("r1", "new.example")],
    )
    got = [await c.recv() for _ in range(4)]
    assert kinds(got) == ["C", "E", "L", "R"]
    assert [delta_names(r) for r in got] == [{"c"}, {"a"}, {"l1"}, {"r1"}]
    assert [r.system_version_info for r in got] == [
        snap.version(t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    ]


async def test_removals_go_after_the_rest_is_acked(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    # Cluster b is replaced by c, and the route moves at the same time.
    snap = publish(
        h.cache,
        clusters=[cluster("a"), cluster("c")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("c", "10.0.0.3:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "c.example")],
    )
    cds, rds = await c.recv(), await c.recv()
    assert (kinds([cds, rds]), delta_names(cds), list(cds.removed_resources)) == (
        ["C", "R"],
        {"c"},
        [],
    )
    await c.ack(cds)
    await c.request(ENDPOINT, ["c"])  # as Envoy does for the new cluster
    eds = await c.recv()
    assert (delta_names(eds), list(eds.removed_resources)) == ({"c"}, [])
    await c.ack(eds)
    assert await c.barrier() == []  # nothing removed while the route is unanswered
    await c.ack(rds)
    removals = [await c.recv() for _ in range(2)]
    assert [(r.type_url, list(r.removed_resources), list(r.resources)) for r in removals] == [
        (CLUSTER, ["b"], []),
        (ENDPOINT, ["b"], []),
    ]
    assert removals[0].system_version_info == snap.version(CLUSTER)


async def test_initial_resource_versions_are_honored_on_reconnect(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    snap = base(h)
    first = await settled(h, channel)
    have = first.have
    await first.close()
    await wait_for(lambda: not h.server.connected_nodes, what="first stream gone")
    # Meanwhile endpoints of a changed and cluster b left.
    snap = publish(
        h.cache,
        clusters=[cluster("a")],
        eds=[endpoints("a", "10.0.0.7:80"), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    c = DeltaClient(channel, "n1")
    await c.request(CLUSTER, initial=have[CLUSTER])
    await c.request(LISTENER, initial=have[LISTENER])
    await c.request(ENDPOINT, ["a", "b"], initial=have[ENDPOINT])
    await c.request(ROUTE, ["r1"], initial=have[ROUTE])
    # Wildcard types get an (empty) answer; of the rest only what changed is sent, and
    # RDS, up to date, just learns the current version.
    got = {r.type_url: r for r in await c.recv_ack(4)}
    assert {t: delta_names(r) for t, r in got.items()} == {
        CLUSTER: set(),
        ENDPOINT: {"a"},
        LISTENER: set(),
        ROUTE: set(),
    }
    assert {t: r.system_version_info for t, r in got.items()} == {
        t: snap.version(t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    }
    removal = await c.recv()
    assert (removal.type_url, list(removal.removed_resources)) == (CLUSTER, ["b"])
    assert removal.system_version_info == snap.version(CLUSTER)
    await c.ack(removal)
    assert await c.barrier() == []


async def test_resubscribe_after_unsubscribe(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    await c.request(ENDPOINT, unsubscribe=["b"])
    assert await c.barrier() == []
    await c.request(ENDPOINT, ["b"])
    eds = await c.recv()
    assert (eds.type_url, delta_names(eds)) == (ENDPOINT, {"b"})


async def test_changed_cluster_gets_its_endpoints_again(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    base(h)
    c = await settled(h, channel)
    snap = publish(  # cluster a changes, its endpoints do not; Envoy asks for nothing
        h.cache,
        clusters=[cluster("a", timeout_s=3), cluster("b")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    cds, eds = await c.recv(), await c.recv()
    assert (delta_names(cds), delta_names(eds)) == ({"a"}, {"a"})
    assert eds.system_version_info == snap.version(ENDPOINT)


async def test_100_streams_all_receive_an_update(h: Harness) -> None:
    base(h)
    n = 100
    channels = [grpc.aio.insecure_channel(h.target) for _ in range(n)]
    try:
        clients = await asyncio.gather(
            *(settled(h, ch, f"node-{i}") for i, ch in enumerate(channels))
        )
        assert len(h.server.connected_nodes) == n

        async def receive(c: DeltaClient) -> float:
            eds = await c.recv(timeout=10.0)
            assert (eds.type_url, delta_names(eds)) == (ENDPOINT, {"a"})
            await c.ack(eds)
            return time.perf_counter()

        waiting = [asyncio.create_task(receive(c)) for c in clients]
        start = time.perf_counter()
        snap = base(h, eds_a="10.0.0.99:80")
        done = await asyncio.gather(*waiting)
        elapsed = max(done) - start
        await wait_for(
            lambda: (
                sum(
                    e.version == snap.version(ENDPOINT)
                    for e in h.recorder.of(EventKind.ACK, ENDPOINT)
                )
                == n
            ),
            what="100 ACKs",
        )
        # Printed, not asserted: each recv has its own deadline; wall time is the machine's.
        print(f"\ndelta: {n} streams received an EDS update in {elapsed * 1e3:.1f} ms")
    finally:
        for ch in channels:
            await ch.close()


@pytest.mark.e2e
async def test_real_envoy_delta() -> None:
    await envoy_scenario(delta=True)
