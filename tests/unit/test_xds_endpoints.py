"""EndpointPublisher: a WARM replica is published in EDS at once but becomes leasable only
when every connected Envoy has ACKed an EDS version containing it.

Stream events reach the publisher the way the ADS server delivers them: recorded in the
node table first. Time is a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from warmroute.state import Phase, PoolSpec, Registry, ReplicaRemoved, ReplicaUpsert
from warmroute.xds.cache import EventKind, SnapshotCache, StreamEvent
from warmroute.xds.endpoints import EndpointPublisher
from warmroute.xds.nodes import NodeTable
from warmroute.xds.snapshot import CLUSTER, ENDPOINT

POOL = "p"
R1, R2 = "10.0.0.1:8000", "10.0.0.2:8000"


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Gate:
    clock: Clock = field(default_factory=Clock)
    cache: SnapshotCache = field(default_factory=SnapshotCache)
    nodes: NodeTable = field(default_factory=NodeTable)
    routable: list[tuple[str, str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = Registry(clock=self.clock)
        self.registry.configure([PoolSpec(POOL, ("m",))])
        self.publisher = EndpointPublisher(
            self.registry,
            self.cache,
            lambda pool, address, waited: self.routable.append((pool, address, waited)),
            nodes=self.nodes,
            clock=self.clock,
        )
        self.publisher.publish()

    def event(self, node: str, kind: EventKind, type_url: str = "", version: str = "") -> None:
        event = StreamEvent(node, type_url, version, kind)
        self.nodes.record(event, self.clock())
        self.publisher.on_stream_event(event)

    def step(self, step: str) -> None:
        """``+n``/``-n``: node n opens/closes a stream; ``ack n``: n ACKs the current EDS;
        ``warm A``/``loading A``/``draining A``/``remove A``: discovery says so of A."""
        verb, _, arg = step.partition(" ")
        if verb.startswith("+"):
            self.event(verb[1:], EventKind.CONNECT)
        elif verb.startswith("-"):
            self.event(verb[1:], EventKind.DISCONNECT)
        elif verb == "ack":
            self.event(arg, EventKind.ACK, ENDPOINT, self.eds_version())
        elif verb == "remove":
            self.publisher.emit(ReplicaRemoved(POOL, arg))
        else:
            self.publisher.emit(ReplicaUpsert(POOL, arg, 1, Phase(verb)))

    def eds_version(self) -> str:
        return self.cache.snapshot_for("any").version(ENDPOINT)

    def phase(self, address: str) -> str | None:
        replica = self.registry.pools[POOL].replicas.get(address)
        return None if replica is None else replica.phase.value

    def eds(self) -> dict[str, str]:
        """Address -> health status name, as Envoy would get it."""
        out = {}
        for resource in self.cache.snapshot_for("any").of_type(ENDPOINT).items.values():
            cla = endpoint_pb2.ClusterLoadAssignment()
            resource.packed.Unpack(cla)
            for locality in cla.endpoints:
                for lb in locality.lb_endpoints:
                    sa = lb.endpoint.address.socket_address
                    status = "DRAINING" if lb.health_status == 3 else "HEALTHY"
                    out[f"{sa.address}:{sa.port_value}"] = status
        return out


@pytest.mark.parametrize(
    ("steps", "phase"),
    [
        # Nobody to wait for: leasable at once.
        (["warm R1"], "warm"),
        (["+a", "-a", "warm R1"], "warm"),
        # One Envoy: held back until it ACKs an EDS version containing R1.
        (["+a", "warm R1"], "loading"),
        (["+a", "warm R1", "ack a"], "warm"),
        (["+a", "ack a", "warm R1"], "loading"),  # an older version does not count
        # Every connected Envoy must have ACKed it.
        (["+a", "+b", "warm R1", "ack a"], "loading"),
        (["+a", "+b", "warm R1", "ack a", "ack b"], "warm"),
        (["+a", "warm R1", "+b", "ack a"], "loading"),  # b connected meanwhile
        # A disconnecting node no longer gates.
        (["+a", "+b", "warm R1", "ack a", "-b"], "warm"),
        (["+a", "warm R1", "-a"], "warm"),
        # ... unless it still has another stream open.
        (["+a", "+a", "warm R1", "-a"], "loading"),
        (["+a", "+a", "warm R1", "-a", "ack a"], "warm"),
        # A version containing R1, ACKed later than another one, still counts.
        (["+a", "warm R1", "ack a", "warm R2"], "warm"),
        # Not warm any more before the ACK: stays out.
        (["+a", "warm R1", "loading R1", "ack a"], "loading"),
        (["+a", "warm R1", "remove R1", "ack a"], None),
        # Already routable: a repeated WARM (e.g. new slots) applies at once.
        (["+a", "warm R1", "ack a", "warm R1"], "warm"),
    ],
)
def test_warm_is_held_back_until_every_connected_node_acked_it(
    steps: list[str], phase: str | None
) -> None:
    gate = Gate()
    for step in steps:
        gate.step(step.replace("R1", R1).replace("R2", R2))
    assert gate.phase(R1) == phase
    assert [a for _, a, _ in gate.routable].count(R1) == (1 if phase == "warm" else 0)


def test_an_ack_of_another_type_does_not_release() -> None:
    gate = Gate()
    gate.step("+a")
    gate.step(f"warm {R1}")
    gate.event("a", EventKind.ACK, CLUSTER, gate.eds_version())
    assert gate.phase(R1) == "loading"


def test_published_at_once_and_reported_with_the_time_held() -> None:
    gate = Gate()
    gate.step("+a")
    gate.clock.now = 1.0
    gate.step(f"warm {R1}")
    assert gate.eds() == {R1: "HEALTHY"}  # Envoy learns of it before it is leasable
    gate.clock.now = 1.25
    gate.step("ack a")
    assert gate.routable == [(POOL, R1, 0.25)]


@pytest.mark.parametrize(
    ("steps", "eds", "phase"),
    [
        (["warm R1", "loading R1"], {}, "loading"),  # out of EDS, not leasable
        (["warm R1", "draining R1"], {R1: "DRAINING"}, "draining"),
        (["warm R1", "remove R1"], {}, None),  # idle: forgotten at once
        (["+a", "warm R1", "draining R1"], {R1: "DRAINING"}, "draining"),
    ],
)
def test_leaving_reaches_the_registry_at_once(
    steps: list[str], eds: dict[str, str], phase: str | None
) -> None:
    gate = Gate()
    for step in steps:
        gate.step(step.replace("R1", R1))
    assert (gate.eds(), gate.phase(R1)) == (eds, phase)
