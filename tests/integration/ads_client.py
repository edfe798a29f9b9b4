"""Test harness for the ADS server: a server on a free port, scripted SotW and delta
clients over real gRPC, snapshot builders, an event recorder and a real-Envoy bootstrap.

Absence of a response is checked with a *barrier*, never a timed wait: every test snapshot
holds a Secret named ``barrier``; ``barrier()`` (re)subscribes to it, which the server
always answers, and Secrets come after CDS/EDS/LDS/RDS in the server's order, so any
response the server meant to send before is read first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2

from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.xds import resources as builders
from warmroute.xds.ads import AdsServer
from warmroute.xds.cache import EventKind, SnapshotCache, StreamEvent
from warmroute.xds.resources import Endpoint
from warmroute.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ORDER,
    ROUTE,
    Resource,
    Resources,
    Snapshot,
)

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
BARRIER = "barrier"
NAMES = {CLUSTER: "C", ENDPOINT: "E", LISTENER: "L", ROUTE: "R", SECRET: "S"}


# -- resources -----------------------------------------------------------------------------


def cluster(name: str, timeout_s: int = 1) -> Resource:
    """An EDS cluster over ADS; change ``timeout_s`` to change the resource."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=timeout_s),
    )
    c.eds_cluster_config.eds_config.CopyFrom(builders.ads_config_source())
    return Resource.of(name, c)


def endpoints(name: str, *addresses: str) -> Resource:
    cla = builders.load_assignment("x", [Endpoint(a) for a in addresses])
    cla.cluster_name = name
    return Resource.of(name, cla)


def listener(name: str, port: int) -> Resource:
    return Resource.of(
        name, listener_pb2.Listener(name=name, address=builders.socket_address(f"0.0.0.0:{port}"))
    )


def route(name: str, domain: str) -> Resource:
    vhost = route_components_pb2.VirtualHost(name=name, domains=[domain])
    return Resource.of(name, route_pb2.RouteConfiguration(name=name, virtual_hosts=[vhost]))


def publish(
    cache: SnapshotCache,
    *,
    clusters: Iterable[Resource] = (),
    eds: Iterable[Resource] = (),
    listeners: Iterable[Resource] = (),
    routes: Iterable[Resource] = (),
    label: str = "",
) -> Snapshot:
    """Set the default snapshot and the endpoints in one step (one wake-up of the streams);
    returns what every node now gets."""
    barrier = Resource.of(BARRIER, secret_pb2.Secret(name=BARRIER))
    snap = Snapshot(
        {
            CLUSTER: Resources.of(clusters),
            LISTENER: Resources.of(listeners),
            ROUTE: Resources.of(routes),
            SECRET: Resources.of([barrier]),
        },
        label,
    )
    cache.set_default(snap)
    cache.set_endpoints(Resources.of(eds))
    return cache.snapshot_for("any")


def resource_name(packed: any_pb2.Any) -> str:
    url = packed.type_url
    msg: Any
    if url == CLUSTER:
        msg = cluster_pb2.Cluster()
    elif url == ENDPOINT:
        msg = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(msg)
        return str(msg.cluster_name)
    elif url == LISTENER:
        msg = listener_pb2.Listener()
    elif url == ROUTE:
        msg = route_pb2.RouteConfiguration()
    else:
        msg = secret_pb2.Secret()
    packed.Unpack(msg)
    return str(msg.name)


def sotw_names(resp: discovery_pb2.DiscoveryResponse) -> set[str]:
    return {resource_name(a) for a in resp.resources}


def delta_names(resp: discovery_pb2.DeltaDiscoveryResponse) -> set[str]:
    for r in resp.resources:
        assert resource_name(r.resource) == r.name
    return {r.name for r in resp.resources}


def kinds(responses: Sequence[Any]) -> list[str]:
    """Short form of a response sequence, e.g. ``["C", "E"]``."""
    return [NAMES.get(r.type_url, r.type_url) for r in responses]


# -- server and observer -------------------------------------------------------------------


@dataclass
class Recorder:
    """A StreamObserver keeping every event."""

    events: list[StreamEvent] = field(default_factory=list)

    def on_stream_event(self, event: StreamEvent) -> None:
        self.events.append(event)

    def of(
        self, kind: EventKind, type_url: str | None = None, node: str | None = None
    ) -> list[StreamEvent]:
        return [
            e
            for e in self.events
            if e.kind is kind
            and (type_url is None or e.type_url == type_url)
            and (node is None or e.node_id == node)
        ]


@dataclass
class Harness:
    cache: SnapshotCache
    recorder: Recorder
    server: AdsServer
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def serve() -> AsyncIterator[Harness]:
    cache = SnapshotCache()
    recorder = Recorder()
    ads = AdsServer(cache, recorder)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Harness(cache, recorder, ads, port)
    finally:
        await ads.close(timeout=5.0)
        await server.stop(None)


# -- clients -------------------------------------------------------------------------------


class SotwClient:
    """A scripted StreamAggregatedResources client: it sends exactly what a test says."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self.node_id = node_id
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.nonces: dict[str, str] = {}  # latest nonce received, per type
        self.versions: dict[str, str] = {}  # latest version accepted, per type
        self.names: dict[str, list[str]] = {}  # current subscription, per type
        self._node_sent = False

    async def request(
        self,
        type_url: str,
        names: Iterable[str] | None = None,
        *,
        nonce: str | None = None,
        error: str | None = None,
    ) -> None:
        if names is not None:
            self.names[type_url] = list(names)
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self.names.get(type_url, []),
            response_nonce=self.nonces.get(type_url, "") if nonce is None else nonce,
            version_info=self.versions.get(type_url, ""),
        )
        if not self._node_sent:
            req.node.id = self.node_id
            self._node_sent = True
        if error is not None:
            req.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            req.error_detail.message = error
        await self.call.write(req)

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.call.read(), timeout)
        assert resp is not grpc.aio.EOF, "stream ended"
        self.nonces[resp.type_url] = resp.nonce
        return resp

    async def ack(
        self, resp: discovery_pb2.DiscoveryResponse, names: Iterable[str] | None = None
    ) -> None:
        self.versions[resp.type_url] = resp.version_info
        await self.request(resp.type_url, names, nonce=resp.nonce)

    async def nack(self, resp: discovery_pb2.DiscoveryResponse, error: str) -> None:
        await self.request(resp.type_url, nonce=resp.nonce, error=error)

    async def recv_ack(self, count: int = 1) -> list[discovery_pb2.DiscoveryResponse]:
        """Read ``count`` responses, ACKing each right away (as Envoy does)."""
        out = []
        for _ in range(count):
            resp = await self.recv()
            await self.ack(resp)
            out.append(resp)
        return out

    async def barrier(self) -> list[discovery_pb2.DiscoveryResponse]:
        """Everything the server sent before answering a barrier request (not ACKed)."""
        await self.request(SECRET, [BARRIER])
        before = []
        while (resp := await self.recv()).type_url != SECRET:
            before.append(resp)
        await self.ack(resp)
        return before

    async def close(self) -> None:
        await self.call.done_writing()


class DeltaClient:
    """A scripted DeltaAggregatedResources client."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self.node_id = node_id
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        self.have: dict[str, dict[str, str]] = {}  # type -> name -> version, as Envoy keeps
        self._node_sent = False

    async def request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if not self._node_sent:
            req.node.id = self.node_id
            self._node_sent = True
        if error is not None:
            req.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            req.error_detail.message = error
        await self.call.write(req)

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DeltaDiscoveryResponse:
        resp = await asyncio.wait_for(self.call.read(), timeout)
        assert resp is not grpc.aio.EOF, "stream ended"
        return resp

    async def ack(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> None:
        have = self.have.setdefault(resp.type_url, {})
        for r in resp.resources:
            have[r.name] = r.version
        for name in resp.removed_resources:
            have.pop(name, None)
        await self.request(resp.type_url, nonce=resp.nonce)

    async def nack(self, resp: discovery_pb2.DeltaDiscoveryResponse, error: str) -> None:
        await self.request(resp.type_url, nonce=resp.nonce, error=error)

    async def recv_ack(self, count: int = 1) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        out = []
        for _ in range(count):
            resp = await self.recv()
            await self.ack(resp)
            out.append(resp)
        return out

    async def barrier(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Everything the server sent before answering a barrier (re)subscription."""
        await self.request(SECRET, [BARRIER])
        before = []
        while (resp := await self.recv()).type_url != SECRET:
            before.append(resp)
        await self.ack(resp)
        return before

    async def close(self) -> None:
        await self.call.done_writing()


# -- real Envoy ----------------------------------------------------------------------------


def envoy_bootstrap(node_id: str, xds_port: int, admin_port: int, *, delta: bool) -> str:
    """A bootstrap taking everything from ADS on 127.0.0.1:``xds_port`` (cluster "xds")."""
    address = {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    doc = {
        "node": {"id": node_id, "cluster": "warmroute-test"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                }
            ]
        },
    }
    return json.dumps(doc, indent=2)


async def envoy_scenario(delta: bool) -> None:
    """A real Envoy bootstraps from the ADS server (SotW or delta), takes a listener, route,
    EDS cluster and endpoint, then follows an endpoint change; every step is ACKed."""
    variant = "delta" if delta else "sotw"
    node = f"envoy-{variant}"
    async with serve() as h:
        admin, listen = free_port(), free_port()
        cfg = Config.model_validate(
            {
                "envoy": {"listen": f"127.0.0.1:{listen}", "admin": f"127.0.0.1:{admin}"},
                "control": {"start_fence": False, "grpc": h.target},
                "pools": [{"name": "p", "models": ["m"], "probe": None}],
            }
        )
        pool_cluster = builders.pool_cluster_name("p")
        envoy = EnvoyProcess(
            envoy_bootstrap(node, h.port, admin, delta=delta), f"127.0.0.1:{admin}"
        )
        try:
            # Ready means Envoy initialised, i.e. the (empty) CDS and LDS were answered.
            await envoy.start(ready_timeout=30.0)
            assert h.server.connected_nodes == {node: 1}

            def config(addresses: list[str], connect_timeout: int = 2) -> Snapshot:
                pool = builders.pool_cluster(cfg.pools[0])
                pool.connect_timeout.seconds = connect_timeout
                return publish(
                    h.cache,
                    clusters=[
                        Resource.of(builders.CONTROL_CLUSTER, builders.control_cluster(cfg)),
                        Resource.of(pool_cluster, pool),
                    ],
                    eds=[
                        Resource.of(
                            pool_cluster,
                            builders.load_assignment("p", [Endpoint(a) for a in addresses]),
                        )
                    ],
                    listeners=[Resource.of(builders.LISTENER_NAME, builders.listener(cfg))],
                    routes=[
                        Resource.of(builders.ROUTE_CONFIG_NAME, builders.route_configuration(cfg))
                    ],
                )

            first = config(["127.0.0.1:9101"])
            async with aiohttp.ClientSession(f"http://127.0.0.1:{admin}") as admin_http:

                async def hosts() -> set[str]:
                    async with admin_http.get("/clusters") as r:
                        text = await r.text()
                    return {
                        line.split("::")[1]
                        for line in text.splitlines()
                        if line.startswith(f"{pool_cluster}::") and "::health_flags::" in line
                    }

                async def has_hosts(want: set[str]) -> bool:
                    return await hosts() == want

                await wait_for(lambda: has_hosts({"127.0.0.1:9101"}), 15.0, what="endpoint")

                def acked(snap: Snapshot) -> bool:
                    have = {e.type_url: e.version for e in h.recorder.of(EventKind.ACK, node=node)}
                    return all(have.get(t) == snap.version(t) for t in ORDER)

                await wait_for(lambda: acked(first), 15.0, what="all four types ACKed")
                async with admin_http.get("/config_dump?include_eds") as r:
                    dump = await r.json()
                found = _dump_names(dump)
                assert pool_cluster in found["clusters"]
                assert builders.CONTROL_CLUSTER in found["clusters"]
                assert builders.LISTENER_NAME in found["listeners"]
                assert builders.ROUTE_CONFIG_NAME in found["routes"]
                assert found["endpoints"].get(pool_cluster) == {"127.0.0.1:9101"}
                assert found["versions"]["clusters"] == first.version(CLUSTER)

                # Replicas change: the endpoint set follows, nothing else is pushed again.
                pushes = len(h.recorder.of(EventKind.PUSH))
                second = config(["127.0.0.1:9102", "127.0.0.1:9103"])
                want = {"127.0.0.1:9102", "127.0.0.1:9103"}
                await wait_for(lambda: has_hosts(want), 15.0, what="endpoint update")
                await wait_for(lambda: acked(second), 15.0, what="EDS update ACKed")
                assert [e.type_url for e in h.recorder.of(EventKind.PUSH)[pushes:]] == [ENDPOINT]

                # The cluster changes, its endpoints do not: Envoy re-creates the cluster,
                # which warms only on a fresh EDS response. Well before Envoy's 15 s
                # initial-fetch timeout it must be active, with its endpoints.
                third = config(["127.0.0.1:9102", "127.0.0.1:9103"], connect_timeout=3)
                await wait_for(lambda: acked(third), 5.0, what="changed cluster ACKed")

                async def warm() -> bool:
                    async with admin_http.get("/config_dump") as r:
                        found = _dump_names(await r.json())
                    return not found["warming"] and pool_cluster in found["clusters"]

                await wait_for(warm, 5.0, what="changed cluster warm")
                assert await hosts() == want
                assert not h.recorder.of(EventKind.NACK)
        except BaseException:
            print(envoy.tail_log())
            raise
        finally:
            await envoy.stop()


def _dump_names(dump: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"clusters": set(), "listeners": set(), "routes": set()}
    found["warming"] = set()
    found["endpoints"] = {}
    found["versions"] = {}
    for section in dump["configs"]:
        kind = section["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            found["versions"]["clusters"] = section.get("version_info", "")
            for c in section.get("dynamic_active_clusters", []):
                found["clusters"].add(c["cluster"]["name"])
            for c in section.get("dynamic_warming_clusters", []):
                found["warming"].add(c["cluster"]["name"])
        elif kind == "ListenersConfigDump":
            for li in section.get("dynamic_listeners", []):
                if "active_state" in li:
                    found["listeners"].add(li["name"])
        elif kind == "RoutesConfigDump":
            for rc in section.get("dynamic_route_configs", []):
                found["routes"].add(rc["route_config"]["name"])
        elif kind == "EndpointsConfigDump":
            for ec in section.get("dynamic_endpoint_configs", []):
                cla = ec["endpoint_config"]
                found["endpoints"][cla["cluster_name"]] = {
                    f"{sa['address']}:{sa['port_value']}"
                    for locality in cla.get("endpoints", [])
                    for lb in locality.get("lb_endpoints", [])
                    for sa in [lb["endpoint"]["address"]["socket_address"]]
                }
    return found
