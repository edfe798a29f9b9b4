"""Rollout: canary, soak, promote; NACK halt and rollback; canary loss; the soak deadline.

Events reach the rollout the way the ADS server delivers them: recorded in the node table
first, then passed on. Time is a fake clock; nothing waits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import duration_pb2

from warmroute.config import RolloutConfig
from warmroute.xds.cache import EventKind, SnapshotCache, StreamEvent
from warmroute.xds.nodes import NodeTable
from warmroute.xds.rollout import CONFIG_TYPES, Rollout, Stage
from warmroute.xds.snapshot import CLUSTER, LISTENER, Resource, Resources, Snapshot
from warmroute.xds.timer import DeadlineTimer


def config(label: str, timeout_s: int) -> Snapshot:
    """A config version: a cluster and a listener, both changing with ``timeout_s``."""
    c = cluster_pb2.Cluster(name="c", connect_timeout=duration_pb2.Duration(seconds=timeout_s))
    listener = listener_pb2.Listener(name="l", stat_prefix=f"t{timeout_s}")
    return Snapshot(
        {
            CLUSTER: Resources.of([Resource.of("c", c)]),
            LISTENER: Resources.of([Resource.of("l", listener)]),
        },
        label,
    )


V1, V2, V3 = config("v1", 1), config("v2", 2), config("v3", 3)


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Fleet:
    """The rollout with its cache and node table, driven as the ADS server drives it."""

    policy: RolloutConfig
    clock: Clock = field(default_factory=Clock)
    cache: SnapshotCache = field(default_factory=SnapshotCache)
    nodes: NodeTable = field(default_factory=NodeTable)
    deadlines: list[float | None] = field(default_factory=list)  # told via on_deadline

    def __post_init__(self) -> None:
        self.rollout = Rollout(self.cache, self.policy, nodes=self.nodes, clock=self.clock)
        self.rollout.on_deadline = lambda: self.deadlines.append(self.rollout.next_deadline())

    def event(self, node: str, kind: EventKind, type_url: str = "", version: str = "") -> None:
        event = StreamEvent(node, type_url, version, kind, error="rejected" * (kind is NACK))
        self.nodes.record(event, self.clock())
        self.rollout.on_stream_event(event)

    def connect(self, *nodes: str) -> None:
        for node in nodes:
            self.event(node, EventKind.CONNECT)

    def ack(self, node: str, types: tuple[str, ...] = CONFIG_TYPES) -> None:
        """``node`` ACKs what the cache gives it now (the types that have resources)."""
        snap = self.cache.snapshot_for(node)
        for t in types:
            if snap.of_type(t).items:
                self.event(node, EventKind.ACK, t, snap.version(t))

    def label_of(self, node: str) -> str:
        return self.cache.snapshot_for(node).label


NACK = EventKind.NACK


def started(policy: RolloutConfig, nodes: tuple[str, ...] = ("a", "b", "c")) -> Fleet:
    """V1 stable and ACKed by every node; V2 proposed."""
    fleet = Fleet(policy)
    fleet.rollout.propose(V1)
    fleet.connect(*nodes)
    for n in nodes:
        fleet.ack(n)
    fleet.rollout.propose(V2)
    return fleet


def test_first_config_and_configs_without_nodes_are_promoted_at_once() -> None:
    fleet = Fleet(RolloutConfig())
    fleet.rollout.propose(V1)
    assert (fleet.rollout.stage, fleet.rollout.stable, fleet.cache.default) == (
        Stage.STABLE, V1, V1,
    )  # fmt: skip
    fleet.rollout.propose(V2)  # nobody connected: nobody to canary
    assert (fleet.rollout.stage, fleet.cache.default) == (Stage.STABLE, V2)


@pytest.mark.parametrize(
    ("policy", "nodes", "canaries"),
    [
        (RolloutConfig(), ("a", "b", "c"), ["a"]),  # at least one
        (RolloutConfig(canary_share=0.5), ("d", "c", "b", "a"), ["a", "b"]),  # sorted by id
        (RolloutConfig(canary_share=1.0), ("a", "b"), ["a", "b"]),
        (RolloutConfig(canary_nodes=["c", "x"]), ("a", "b", "c"), ["c"]),  # named, connected
        (RolloutConfig(canary_nodes=["x"]), ("a", "b"), ["a"]),  # none connected: by share
    ],
)
def test_canary_choice(policy: RolloutConfig, nodes: tuple[str, ...], canaries: list[str]) -> None:
    fleet = started(policy, nodes)
    assert fleet.rollout.stage is Stage.CANARY
    assert sorted(fleet.rollout.canaries) == canaries
    for n in nodes:
        assert fleet.label_of(n) == ("v2" if n in canaries else "v1")


def test_canary_soak_promote() -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    rollout = fleet.rollout
    fleet.ack("a", (CLUSTER,))  # not every config type yet
    assert (rollout.stage, rollout.next_deadline()) == (Stage.CANARY, None)
    fleet.ack("a")
    assert (rollout.stage, rollout.next_deadline()) == (Stage.SOAKING, 105.0)
    assert fleet.deadlines == [105.0]
    fleet.clock.now = 104.9
    rollout.tick()
    assert (rollout.stage, rollout.next_deadline()) == (Stage.SOAKING, 105.0)
    fleet.clock.now = 105.0
    rollout.tick()
    assert (rollout.stage, rollout.stable, rollout.candidate, rollout.canaries) == (
        Stage.STABLE, V2, None, frozenset(),
    )  # fmt: skip
    assert [fleet.label_of(n) for n in "abc"] == ["v2", "v2", "v2"]
    assert fleet.deadlines == [105.0, None]


def test_no_soak_promotes_within_the_ack_event() -> None:
    fleet = started(RolloutConfig(soak_seconds=0))
    fleet.ack("a")
    assert (fleet.rollout.stage, fleet.cache.default) == (Stage.STABLE, V2)
    assert fleet.deadlines == []  # nothing was ever timed


@pytest.mark.parametrize(
    ("nacker", "version", "halted"),
    [
        ("a", V2.version(LISTENER), True),  # the canary rejects the candidate
        ("b", V2.version(LISTENER), True),  # anyone rejecting the candidate halts it
        ("b", V1.version(LISTENER), False),  # a NACK of another version does not
        ("a", "unknown", False),
    ],
)
def test_nack_of_the_candidate_halts_and_rolls_back(
    nacker: str, version: str, halted: bool
) -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    fleet.event(nacker, NACK, LISTENER, version)
    rollout = fleet.rollout
    if not halted:
        assert rollout.stage is Stage.CANARY and fleet.label_of("a") == "v2"
        return
    assert (rollout.stage, rollout.stable, rollout.candidate) == (Stage.HALTED, V1, None)
    assert f"node {nacker} rejected" in rollout.halt_reason
    assert [fleet.label_of(n) for n in "abc"] == ["v1", "v1", "v1"]
    assert fleet.cache.default == V1


def test_nack_while_soaking_cancels_the_deadline() -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    fleet.ack("a")
    fleet.event("a", NACK, CLUSTER, V2.version(CLUSTER))
    assert fleet.rollout.stage is Stage.HALTED
    assert fleet.deadlines == [105.0, None]
    fleet.clock.now = 200.0
    fleet.rollout.tick()
    assert fleet.cache.default == V1  # the halted candidate is never promoted


@pytest.mark.parametrize("soaking", [False, True])
def test_canary_disconnect_restarts_on_the_nodes_still_there(soaking: bool) -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    if soaking:
        fleet.ack("a")
    fleet.event("a", EventKind.DISCONNECT)
    rollout = fleet.rollout
    assert (rollout.stage, rollout.candidate, sorted(rollout.canaries)) == (
        Stage.CANARY, V2, ["b"],
    )  # fmt: skip
    assert rollout.next_deadline() is None
    assert (fleet.label_of("a"), fleet.label_of("b")) == ("v1", "v2")
    fleet.ack("b")
    assert rollout.next_deadline() == 105.0


def test_every_node_gone_promotes_for_whoever_comes_next() -> None:
    fleet = started(RolloutConfig(soak_seconds=5), ("a",))
    fleet.event("a", EventKind.DISCONNECT)
    assert (fleet.rollout.stage, fleet.cache.default) == (Stage.STABLE, V2)


def test_a_non_canary_disconnecting_changes_nothing() -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    fleet.event("c", EventKind.DISCONNECT)
    assert fleet.rollout.stage is Stage.CANARY and sorted(fleet.rollout.canaries) == ["a"]


def test_a_new_proposal_replaces_the_candidate() -> None:
    fleet = started(RolloutConfig(canary_nodes=["a"], soak_seconds=5))
    fleet.ack("a")
    fleet.rollout.policy = RolloutConfig(canary_nodes=["b"], soak_seconds=5)
    fleet.rollout.propose(V3)
    rollout = fleet.rollout
    assert (rollout.stage, rollout.candidate, sorted(rollout.canaries)) == (
        Stage.CANARY, V3, ["b"],
    )  # fmt: skip
    assert [fleet.label_of(n) for n in "abc"] == ["v1", "v3", "v1"]
    assert fleet.deadlines == [105.0, None]


def test_adopt_makes_a_version_every_nodes_at_once_replacing_a_candidate() -> None:
    """For changes no Envoy can be hurt by (clusters no route names leaving): unstaged."""
    fleet = started(RolloutConfig(canary_nodes=["a"], soak_seconds=5))
    changes: list[Stage] = []
    fleet.rollout.on_change = lambda r: changes.append(r.stage)
    fleet.rollout.adopt(V3, why="drained")
    rollout = fleet.rollout
    assert (rollout.stage, rollout.stable, rollout.candidate) == (Stage.STABLE, V3, None)
    assert rollout.canaries == frozenset()
    assert [fleet.label_of(n) for n in "abc"] == ["v3", "v3", "v3"]
    assert changes == [Stage.STABLE]
    assert rollout.next_deadline() is None  # no soak pending


def test_proposing_what_the_canaries_already_hold_soaks_at_once() -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    fleet.ack("a")
    fleet.clock.now = 101.0
    same = config("v2-again", 2)  # V2's resources under another label
    fleet.rollout.propose(same)
    assert (fleet.rollout.stage, fleet.rollout.next_deadline()) == (Stage.SOAKING, 106.0)
    assert fleet.deadlines == [105.0, 106.0]  # no ADS event follows: the rollout says so
    fleet.clock.now = 106.0
    fleet.rollout.tick()
    assert (fleet.rollout.stage, fleet.cache.default) == (Stage.STABLE, same)


def test_status_merges_the_node_table() -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    fleet.ack("a")
    fleet.event("b", NACK, CLUSTER, "old")
    status = fleet.rollout.status()
    assert {k: status[k] for k in ("stage", "stable", "candidate", "canaries")} == {
        "stage": "soaking",
        "stable": "v1",
        "candidate": "v2",
        "canaries": ["a"],
    }
    assert status["soak_seconds_left"] == 5.0
    nodes = status["nodes"]
    assert sorted(nodes) == ["a", "b", "c"]
    assert (nodes["a"]["config"], nodes["a"]["pending"]) == ("v2", "v2")
    assert (nodes["b"]["config"], nodes["b"]["pending"]) == ("v1", None)
    assert (nodes["b"]["last_nack"], nodes["b"]["last_nack_type"]) == ("rejected", "Cluster")
    assert nodes["a"]["acked"] == {"Cluster": V2.version(CLUSTER), "Listener": V2.version(LISTENER)}
    assert fleet.rollout.connected() == ["a", "b", "c"]


# -- the soak deadline on a loop timer (xds.timer, as the ADS server arms it) ---------------


@dataclass
class Firings:
    times: list[float] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)


def timed(fleet: Fleet) -> tuple[DeadlineTimer, Firings]:
    """Arm a DeadlineTimer on the rollout as AdsServer does; returns it and its firings."""
    fired = Firings()

    def fire() -> None:
        fired.times.append(fleet.clock())
        fired.event.set()
        fleet.rollout.tick()

    timer = DeadlineTimer(fleet.rollout.next_deadline, fire, clock=fleet.clock)
    fleet.rollout.on_deadline = timer.rearm
    return timer, fired


async def test_the_soak_ends_on_the_timer_without_a_tick() -> None:
    fleet = started(RolloutConfig(soak_seconds=0.02))
    timer, fired = timed(fleet)
    promoted = asyncio.Event()
    fleet.rollout.on_change = lambda r: promoted.set() if r.stage is Stage.STABLE else None
    fleet.ack("a")
    assert timer.armed_for == 100.02
    # The loop's clock runs ahead of the rollout's (fake, stopped): the timer fires, the
    # soak is not over yet, and the timer re-arms itself for the same deadline.
    async with asyncio.timeout(5):
        await fired.event.wait()
    assert (fleet.rollout.stage, timer.armed_for) == (Stage.SOAKING, 100.02)
    fleet.clock.now = 100.02
    async with asyncio.timeout(5):
        await promoted.wait()
    assert fleet.cache.default == V2 and timer.armed_for is None


async def test_the_timer_follows_the_deadline_and_close_cancels_it() -> None:
    fleet = started(RolloutConfig(soak_seconds=60))
    timer, fired = timed(fleet)
    fleet.ack("a")
    assert timer.armed_for == 160.0
    fleet.event("a", EventKind.DISCONNECT)  # back to the canary stage: nothing timed
    assert timer.armed_for is None
    fleet.ack("b")
    assert timer.armed_for == 160.0
    timer.close()
    assert timer.armed_for is None
    timer.rearm()
    assert timer.armed_for is None and fired.times == []


def test_without_a_running_loop_nothing_is_armed() -> None:
    fleet = started(RolloutConfig(soak_seconds=5))
    timer, _ = timed(fleet)
    fleet.ack("a")
    assert fleet.rollout.next_deadline() == 105.0 and timer.armed_for is None
