"""State-of-the-world ADS over real gRPC: scripted clients, then a real Envoy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers import wait_for
from tests.integration.ads_client import (
    Harness,
    SotwClient,
    cluster,
    endpoints,
    envoy_scenario,
    kinds,
    listener,
    publish,
    route,
    serve,
    sotw_names,
)
from warmroute.xds.cache import EventKind
from warmroute.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from warmroute.xds.sotw import RETAINED_SUFFIX


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


async def settled(h: Harness, channel: grpc.aio.Channel, node: str = "n1") -> SotwClient:
    """A client that, like Envoy, requested CDS and LDS, then EDS and RDS, and ACKed all."""
    c = SotwClient(channel, node)
    await c.request(CLUSTER, [])
    await c.request(LISTENER, [])
    assert kinds(await c.recv_ack(2)) == ["C", "L"]
    await c.request(ENDPOINT, ["a", "b"])
    await c.request(ROUTE, ["r1"])
    assert kinds(await c.recv_ack(2)) == ["E", "R"]
    return c


async def test_initial_wildcard_cds_and_lds(h: Harness, channel: grpc.aio.Channel) -> None:
    snap = base(h)
    c = SotwClient(channel, "n1")
    await c.request(CLUSTER, [])
    cds = await c.recv()
    assert cds.type_url == CLUSTER
    assert cds.version_info == snap.version(CLUSTER)
    assert sotw_names(cds) == {"a", "b"}
    assert cds.nonce
    await c.ack(cds)
    await c.request(LISTENER, ["*"])  # the explicit wildcard works the same
    lds = await c.recv()
    assert (lds.version_info, sotw_names(lds)) == (snap.version(LISTENER), {"l1"})
    await c.ack(lds)
    await wait_for(lambda: len(h.recorder.of(EventKind.ACK)) == 2, what="two ACKs")
    assert [e.kind for e in h.recorder.events][:1] == [EventKind.CONNECT]
    ack = h.recorder.of(EventKind.ACK, CLUSTER)[0]
    assert (ack.node_id, ack.version) == ("n1", snap.version(CLUSTER))
    assert ack.push_latency is not None and ack.push_latency >= 0
    assert h.server.connected_nodes == {"n1": 1}
    # EDS and RDS were never requested: nothing of them was sent.
    assert await c.barrier() == []
    await c.close()
    await wait_for(lambda: bool(h.recorder.of(EventKind.DISCONNECT)), what="disconnect")
    assert h.server.connected_nodes == {}


async def test_named_types_send_requested_names_that_exist(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    base(h)
    c = SotwClient(channel, "n1")
    await c.request(ENDPOINT, ["zz"])  # does not exist (yet): Envoy waits for it
    assert await c.barrier() == []
    await c.request(ENDPOINT, ["a", "zz"])
    eds = await c.recv()
    assert sotw_names(eds) == {"a"}
    await c.ack(eds)
    await c.request(ROUTE, ["r1"])
    assert sotw_names(await c.recv()) == {"r1"}
    # zz springs into existence: the server remembers it was asked for.
    publish(
        h.cache,
        clusters=[cluster("a"), cluster("b")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("zz", "10.0.0.9:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    eds2 = await c.recv()
    assert eds2.type_url == ENDPOINT
    assert sotw_names(eds2) == {"a", "zz"}


async def test_ack_then_new_version_is_pushed(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    snap = base(h, eds_a="10.0.0.7:80")
    eds = await c.recv()
    assert (eds.type_url, eds.version_info) == (ENDPOINT, snap.version(ENDPOINT))
    await c.ack(eds)
    await wait_for(
        lambda: any(
            e.version == snap.version(ENDPOINT) for e in h.recorder.of(EventKind.ACK, ENDPOINT)
        ),
        what="ACK of the new EDS version",
    )
    assert await c.barrier() == []


async def test_nack_is_reported_and_not_repushed(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    bad = base(h, domain="bad.example")
    rds = await c.recv()
    assert rds.version_info == bad.version(ROUTE)
    await c.nack(rds, "duplicate virtual host domain")
    await wait_for(lambda: bool(h.recorder.of(EventKind.NACK)), what="NACK reported")
    nack = h.recorder.of(EventKind.NACK)[0]
    assert (nack.type_url, nack.version) == (ROUTE, bad.version(ROUTE))
    assert nack.error == "duplicate virtual host domain"
    assert await c.barrier() == []  # the same version is not sent again
    base(h, domain="bad.example")  # nor when the same snapshot is set again
    assert await c.barrier() == []
    fixed = base(h, domain="good.example")
    again = await c.recv()
    assert (again.type_url, again.version_info) == (ROUTE, fixed.version(ROUTE))


async def test_stale_nonce_is_ignored(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    old_nonce = c.nonces[ENDPOINT]
    snap = base(h, eds_a="10.0.0.7:80")
    eds = await c.recv()
    # A NACK carrying the old nonce answers nothing: no event, the push stays in flight.
    await c.request(ENDPOINT, nonce=old_nonce, error="late complaint")
    await c.ack(eds)
    await wait_for(
        lambda: any(
            e.version == snap.version(ENDPOINT) for e in h.recorder.of(EventKind.ACK, ENDPOINT)
        ),
        what="ACK",
    )
    assert h.recorder.of(EventKind.NACK) == []
    # A request with a stale nonce asking for more names is not answered either...
    await c.request(ENDPOINT, ["a", "b", "c"], nonce=old_nonce)
    assert await c.barrier() == []
    # ...until the client asks with the latest nonce.
    publish(
        h.cache,
        clusters=[cluster("a"), cluster("b")],
        eds=[
            endpoints("a", "10.0.0.7:80"),
            endpoints("b", "10.0.0.2:80"),
            endpoints("c", "1.1.1.1:1"),
        ],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    eds2 = await c.recv()
    assert sotw_names(eds2) == {"a", "b"}  # the stale request's "c" was never subscribed
    await c.ack(eds2, ["a", "b", "c"])
    assert sotw_names(await c.recv()) == {"a", "b", "c"}


async def test_unchanged_versions_are_not_pushed(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    base(h)  # identical content: identical versions
    assert await c.barrier() == []
    publish(  # only the listener changes: only LDS is pushed
        h.cache,
        clusters=[cluster("a"), cluster("b")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 8081)],
        routes=[route("r1", "a.example")],
    )
    assert kinds(await c.barrier()) == ["L"]


async def test_full_update_goes_out_in_order(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    snap = publish(
        h.cache,
        clusters=[cluster("a", timeout_s=2), cluster("b")],
        eds=[endpoints("a", "10.0.0.5:80"), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 9090)],
        routes=[route("r1", "new.example")],
    )
    got = [await c.recv() for _ in range(4)]
    assert kinds(got) == ["C", "E", "L", "R"]
    assert [r.version_info for r in got] == [
        snap.version(t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    ]
    assert len({r.nonce for r in got}) == 4


async def test_removed_cluster_goes_after_the_rest_is_acked(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    base(h)
    c = await settled(h, channel)
    # Cluster b is replaced by c; the route moves to the new domain at the same time.
    snap = publish(
        h.cache,
        clusters=[cluster("a"), cluster("c")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("c", "10.0.0.3:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "c.example")],
    )
    cds, eds, rds = [await c.recv() for _ in range(3)]
    assert kinds([cds, eds, rds]) == ["C", "E", "R"]
    assert cds.version_info == snap.version(CLUSTER) + RETAINED_SUFFIX
    assert sotw_names(cds) == {"a", "b", "c"}  # make before break: b still there
    await c.ack(cds)
    await c.ack(eds, ["a", "b", "c"])  # as Envoy does for the new cluster
    eds_c = await c.recv()
    assert sotw_names(eds_c) == {"a", "c"}
    await c.ack(eds_c)
    assert await c.barrier() == []  # b stays while the route update is unanswered
    await c.ack(rds)
    final = await c.recv()
    assert (final.type_url, final.version_info) == (CLUSTER, snap.version(CLUSTER))
    assert sotw_names(final) == {"a", "c"}
    await c.ack(final)
    # Envoy drops the removed cluster's EDS name: a smaller set needs no response.
    await c.request(ENDPOINT, ["a", "c"])
    assert await c.barrier() == []
    acked = {e.type_url: e.version for e in h.recorder.of(EventKind.ACK)}
    assert acked[CLUSTER] == snap.version(CLUSTER)


async def test_removal_alone_is_one_push_after_acks(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    snap = publish(
        h.cache,
        clusters=[cluster("a")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    cds = await c.recv()
    assert (cds.version_info, sotw_names(cds)) == (snap.version(CLUSTER), {"a"})


async def test_changed_cluster_gets_its_endpoints_again(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    base(h)
    c = await settled(h, channel)
    snap = publish(  # cluster a changes; its endpoints do not
        h.cache,
        clusters=[cluster("a", timeout_s=3), cluster("b")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("b", "10.0.0.2:80")],
        listeners=[listener("l1", 8080)],
        routes=[route("r1", "a.example")],
    )
    cds = await c.recv()
    await c.ack(cds)
    # Envoy re-creates cluster a, which warms only on a fresh ClusterLoadAssignment; its
    # re-request carries the EDS nonce from before this update (stale: ignored).
    await c.request(ENDPOINT, ["a", "b"])
    eds = await c.recv()
    assert (eds.type_url, eds.version_info) == (ENDPOINT, snap.version(ENDPOINT))
    assert sotw_names(eds) == {"a", "b"}
    await c.ack(eds)
    assert await c.barrier() == []


async def test_rerequest_of_the_same_names_is_answered(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    snap = base(h)
    c = await settled(h, channel)
    await c.request(ENDPOINT, ["a", "b"])  # not an ACK: a new watch for the same names
    eds = await c.recv()
    assert (eds.version_info, sotw_names(eds)) == (snap.version(ENDPOINT), {"a", "b"})


async def test_resubscribe_after_unsubscribe(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    c = await settled(h, channel)
    await c.request(ENDPOINT, ["a"])
    assert await c.barrier() == []
    await c.request(ENDPOINT, ["a", "b"])
    eds = await c.recv()
    assert sotw_names(eds) == {"a", "b"}
    # In SotW an empty list after explicit names means "none", not wildcard.
    await c.ack(eds, [])
    assert await c.barrier() == []
    await c.request(ENDPOINT, ["b"])
    assert sotw_names(await c.recv()) == {"b"}


async def test_first_request_without_node_is_rejected(
    h: Harness, channel: grpc.aio.Channel
) -> None:
    c = SotwClient(channel, "")
    await c.request(CLUSTER, [])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_close_ends_every_stream(h: Harness, channel: grpc.aio.Channel) -> None:
    base(h)
    clients = [await settled(h, channel, f"n{i}") for i in range(3)]
    assert h.server.connected_nodes == {"n0": 1, "n1": 1, "n2": 1}
    await h.server.close()
    assert h.server.connected_nodes == {}
    for c in clients:
        assert await c.call.read() is grpc.aio.EOF
    assert len(h.recorder.of(EventKind.DISCONNECT)) == 3


async def test_100_streams_all_receive_an_update(h: Harness) -> None:
    base(h)
    n = 100
    channels = [grpc.aio.insecure_channel(h.target) for _ in range(n)]
    try:
        clients = await asyncio.gather(
            *(settled(h, ch, f"node-{i}") for i, ch in enumerate(channels))
        )
        assert len(h.server.connected_nodes) == n

        async def receive(c: SotwClient) -> float:
            eds = await c.recv(timeout=10.0)
            assert eds.type_url == ENDPOINT
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
        print(f"\nSotW: {n} streams received an EDS update in {elapsed * 1e3:.1f} ms")
    finally:
        for ch in channels:
            await ch.close()


@pytest.mark.e2e
async def test_real_envoy_sotw() -> None:
    await envoy_scenario(delta=False)
