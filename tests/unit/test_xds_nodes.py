"""NodeTable: per Envoy node streams, ACKed / pending versions and NACKs, from stream events."""

from __future__ import annotations

from typing import Any

import pytest

from warmroute.metrics import Metrics
from warmroute.state import Registry
from warmroute.xds.cache import EventKind, StreamEvent
from warmroute.xds.nodes import Nack, NodeTable
from warmroute.xds.snapshot import CLUSTER, ENDPOINT

CONNECT, DISCONNECT = EventKind.CONNECT, EventKind.DISCONNECT
PUSH, ACK, NACK = EventKind.PUSH, EventKind.ACK, EventKind.NACK


def ev(
    kind: EventKind,
    node: str = "n1",
    *,
    type_url: str = "",
    version: str = "",
    error: str = "",
    cluster: str = "",
) -> StreamEvent:
    return StreamEvent(node, type_url, version, kind, error=error, cluster=cluster)


def play(table: NodeTable, events: list[tuple[float, StreamEvent]]) -> None:
    for now, event in events:
        table.record(event, now)


@pytest.mark.parametrize(
    ("events", "streams", "since"),
    [
        ([ev(CONNECT)], 1, 1.0),
        ([ev(CONNECT), ev(CONNECT)], 2, 1.0),  # a reconnect overlapping the old stream
        ([ev(CONNECT), ev(CONNECT), ev(DISCONNECT)], 1, 1.0),
        ([ev(CONNECT), ev(DISCONNECT)], 0, None),
        ([ev(CONNECT), ev(DISCONNECT), ev(DISCONNECT)], 0, None),  # never below 0
        ([ev(CONNECT), ev(DISCONNECT), ev(CONNECT)], 1, 3.0),  # connected anew
    ],
)
def test_streams_and_connected_since(
    events: list[StreamEvent], streams: int, since: float | None
) -> None:
    table = NodeTable()
    play(table, [(float(i + 1), e) for i, e in enumerate(events)])
    node = table.get("n1")
    assert node is not None
    assert (node.streams, node.connected, node.connected_since) == (streams, streams > 0, since)
    assert table.connected() == (["n1"] if streams else [])
    assert table.is_connected("n1") is (streams > 0)


def test_cluster_comes_from_the_connect_event() -> None:
    table = NodeTable()
    table.record(ev(CONNECT, cluster="edge"), 0.0)
    table.record(ev(CONNECT, "n2"), 0.0)
    assert [(n.node_id, n.cluster) for n in table] == [("n1", "edge"), ("n2", "")]


@pytest.mark.parametrize(
    ("events", "acked", "pending", "nack"),
    [
        ([ev(PUSH, type_url=CLUSTER, version="v1")], {}, {CLUSTER: "v1"}, None),
        (
            [ev(PUSH, type_url=CLUSTER, version="v1"), ev(ACK, type_url=CLUSTER, version="v1")],
            {CLUSTER: "v1"},
            {},
            None,
        ),
        (
            [
                ev(PUSH, type_url=CLUSTER, version="v1"),
                ev(NACK, type_url=CLUSTER, version="v1", error="bad"),
            ],
            {},
            {},
            Nack(CLUSTER, "v1", "bad", 2.0),
        ),
        (  # a NACK keeps what the node ACKed before
            [
                ev(PUSH, type_url=CLUSTER, version="v1"),
                ev(ACK, type_url=CLUSTER, version="v1"),
                ev(PUSH, type_url=CLUSTER, version="v2"),
                ev(NACK, type_url=CLUSTER, version="v2", error="bad"),
            ],
            {CLUSTER: "v1"},
            {},
            Nack(CLUSTER, "v2", "bad", 4.0),
        ),
        (  # an answer to an older version leaves a newer push pending (overlapping streams)
            [ev(PUSH, type_url=CLUSTER, version="v2"), ev(ACK, type_url=CLUSTER, version="v1")],
            {CLUSTER: "v1"},
            {CLUSTER: "v2"},
            None,
        ),
        (  # types are independent
            [
                ev(PUSH, type_url=CLUSTER, version="c1"),
                ev(PUSH, type_url=ENDPOINT, version="e1"),
                ev(ACK, type_url=ENDPOINT, version="e1"),
            ],
            {ENDPOINT: "e1"},
            {CLUSTER: "c1"},
            None,
        ),
        (  # the last stream ending clears what was in flight, keeps what was applied
            [
                ev(CONNECT),
                ev(PUSH, type_url=CLUSTER, version="v1"),
                ev(ACK, type_url=CLUSTER, version="v1"),
                ev(PUSH, type_url=ENDPOINT, version="e1"),
                ev(DISCONNECT),
            ],
            {CLUSTER: "v1"},
            {},
            None,
        ),
    ],
)
def test_versions(
    events: list[StreamEvent],
    acked: dict[str, str],
    pending: dict[str, str],
    nack: Nack | None,
) -> None:
    table = NodeTable()
    play(table, [(float(i + 1), e) for i, e in enumerate(events)])
    node = table.get("n1")
    assert node is not None
    assert (node.acked, node.pending, node.last_nack) == (acked, pending, nack)
    for type_url, version in acked.items():
        assert table.acked("n1", type_url) == version
        assert node.has_acked(type_url, version)


def test_acked_of_an_unknown_node_or_type_is_empty() -> None:
    table = NodeTable()
    assert table.acked("nobody", ENDPOINT) == ""
    table.record(ev(CONNECT), 0.0)
    assert table.acked("n1", ENDPOINT) == ""


def test_only_the_most_recently_disconnected_nodes_are_kept() -> None:
    table = NodeTable(keep_disconnected=2)
    for n in ("a", "b", "c", "live"):
        table.record(ev(CONNECT, n), 0.0)
    for n in ("a", "b", "c"):
        table.record(ev(DISCONNECT, n), 1.0)
    assert [n.node_id for n in table] == ["b", "c", "live"]
    # Reconnecting takes a node off the list of candidates to forget.
    table.record(ev(CONNECT, "b"), 2.0)
    table.record(ev(CONNECT, "d"), 2.0)
    table.record(ev(DISCONNECT, "d"), 3.0)
    assert [n.node_id for n in table] == ["b", "c", "d", "live"]
    table.record(ev(DISCONNECT, "live"), 4.0)
    assert [n.node_id for n in table] == ["b", "d", "live"]


def test_status_is_json_ready_with_short_type_names() -> None:
    table = NodeTable()
    play(
        table,
        [
            (10.0, ev(CONNECT, cluster="edge")),
            (11.0, ev(PUSH, type_url=CLUSTER, version="c1")),
            (11.5, ev(ACK, type_url=CLUSTER, version="c1")),
            (12.0, ev(PUSH, type_url=ENDPOINT, version="e1")),
            (12.5, ev(NACK, type_url=ENDPOINT, version="e1", error="no")),
            (13.0, ev(PUSH, type_url=ENDPOINT, version="e2")),
        ],
    )
    assert table.status(20.0) == {
        "n1": {
            "connected": True,
            "cluster": "edge",
            "streams": 1,
            "connected_seconds": 10.0,
            "acked": {"Cluster": "c1"},
            "in_flight": {"ClusterLoadAssignment": "e2"},
            "last_nack": "no",
            "last_nack_type": "ClusterLoadAssignment",
            "last_nack_version": "e1",
            "last_nack_seconds_ago": 7.5,
        }
    }


def test_metrics_read_streams_per_node_from_the_status() -> None:
    table = NodeTable()
    play(
        table,
        [
            (0.0, ev(CONNECT, "a", cluster="edge")),
            (0.0, ev(CONNECT, "a", cluster="edge")),
            (0.0, ev(CONNECT, "b")),
            (1.0, ev(DISCONNECT, "b")),
        ],
    )

    def status() -> dict[str, Any]:
        nodes = table.status(2.0)
        for entry in nodes.values():
            entry.update(config=None, pending=None)  # the rollout's part
        return {"nodes": nodes}

    metrics = Metrics(Registry().view, status)
    metrics.on_stream_event(ev(CONNECT, "c"))  # counted from the table, not from events
    text = metrics.exposition().decode()
    assert "warmroute_xds_streams 2.0" in text
    assert 'warmroute_xds_node_streams{cluster="edge",node="a"} 2.0' in text
    assert 'warmroute_xds_node_streams{cluster="",node="b"} 0.0' in text
