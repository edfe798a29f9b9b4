"""Subscription (wildcard vs named, SotW and delta rules) and TypeState (nonces, flights)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from warmroute.xds.cache import EventKind
from warmroute.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Resources
from warmroute.xds.subscription import (
    Subscription,
    TypeState,
    eds_names,
    new_nonce,
    push_event,
)

# (wildcard, legacy_wildcard, names) after each request.
State = tuple[bool, bool, set[str]]


@pytest.mark.parametrize(
    ("type_url", "requests", "states"),
    [
        # CDS/LDS: a first request without names is a legacy wildcard, and stays one.
        (CLUSTER, [[]], [(True, True, set())]),
        (LISTENER, [[], []], [(True, True, set()), (True, True, set())]),
        # Names after a legacy wildcard replace it (SotW: the request is the whole set).
        (CLUSTER, [[], ["a"]], [(True, True, set()), (False, False, {"a"})]),
        # No names after explicit names: nothing, not a wildcard.
        (CLUSTER, [["a"], []], [(False, False, {"a"}), (False, False, set())]),
        # EDS/RDS are never legacy wildcards.
        (ENDPOINT, [[]], [(False, False, set())]),
        (ROUTE, [["r"], ["r", "s"]], [(False, False, {"r"}), (False, False, {"r", "s"})]),
        # "*" subscribes to everything, any type, alongside names.
        (ENDPOINT, [["*"]], [(True, False, set())]),
        (CLUSTER, [["*", "a"]], [(True, False, {"a"})]),
        (CLUSTER, [["*"], ["a"]], [(True, False, set()), (False, False, {"a"})]),
    ],
)
def test_sotw_names_replace_the_subscription(
    type_url: str, requests: list[list[str]], states: list[State]
) -> None:
    sub = Subscription(type_url)
    for i, (names, want) in enumerate(zip(requests, states, strict=True)):
        before = (sub.wildcard, set(sub.names), sub.generation)
        changed = sub.set_names(names, first=i == 0)
        assert (sub.wildcard, sub.legacy_wildcard, sub.names) == want
        assert changed == ((sub.wildcard, sub.names) != before[:2])
        assert sub.generation == before[2] + changed


@pytest.mark.parametrize(
    ("type_url", "requests", "state", "dropped"),
    [
        (CLUSTER, [([], [])], (True, True, set()), set()),  # first, no names: legacy
        (ENDPOINT, [([], [])], (False, False, set()), set()),
        (ENDPOINT, [(["a", "b"], []), ([], ["a"])], (False, False, {"b"}), {"a"}),
        (ENDPOINT, [(["*"], [])], (True, False, set()), set()),
        (CLUSTER, [([], []), ([], ["*"])], (False, False, set()), set()),  # wildcard ends
        # Names after a legacy wildcard: still everything, now as an explicit wildcard.
        (CLUSTER, [([], []), (["a"], [])], (True, False, {"a"}), set()),
        # A name dropped from a wildcard subscription is still wanted.
        (CLUSTER, [(["*", "a"], []), ([], ["a"])], (True, False, set()), set()),
        # Ending the wildcard drops nothing named; the client forgets the rest itself.
        (ENDPOINT, [(["*", "a"], []), ([], ["*"])], (False, False, {"a"}), set()),
        (ENDPOINT, [(["a"], []), ([], ["zzz"])], (False, False, {"a"}), {"zzz"}),
    ],
)
def test_delta_subscribe_and_unsubscribe(
    type_url: str,
    requests: list[tuple[list[str], list[str]]],
    state: State,
    dropped: set[str],
) -> None:
    sub = Subscription(type_url)
    out: set[str] = set()
    for i, (add, drop) in enumerate(requests):
        out = sub.update(add, drop, first=i == 0)
    assert (sub.wildcard, sub.legacy_wildcard, sub.names) == state
    assert out == dropped


def test_select_wildcard_is_everything_named_is_what_exists() -> None:
    a, b = (Resource.of(n, cluster_pb2.Cluster(name=n)) for n in ("a", "b"))
    resources = Resources.of([a, b])
    wildcard = Subscription(CLUSTER, wildcard=True)
    assert wildcard.select(resources) is resources.items
    named = Subscription(CLUSTER, names={"a", "missing"})
    assert dict(named.select(resources)) == {"a": a}
    assert (named.wants("a"), named.wants("b"), wildcard.wants("b")) == (True, False, True)


def test_launch_then_settle_reports_ack_or_nack_with_latency() -> None:
    st = TypeState(Subscription(CLUSTER))
    nonce = st.launch("v1", now=10.0)
    assert (st.nonce, st.flight is not None, st.synced) == (nonce, True, None)
    ack = st.settle("n1", CLUSTER, None, now=10.5)
    assert (ack.kind, ack.node_id, ack.version, ack.push_latency) == (
        EventKind.ACK,
        "n1",
        "v1",
        0.5,
    )
    assert st.flight is None and st.nonce == nonce  # the nonce stays: stale requests
    st.launch("v2", now=20.0)
    nack = st.settle("n1", CLUSTER, "bad listener", now=21.0)
    assert (nack.kind, nack.version, nack.error, nack.push_latency) == (
        EventKind.NACK, "v2", "bad listener", 1.0,
    )  # fmt: skip
    assert push_event("n1", CLUSTER, "v3").kind is EventKind.PUSH


def test_nonces_are_never_reused() -> None:
    nonces = [new_nonce() for _ in range(1000)]
    assert len(set(nonces)) == 1000


@pytest.mark.parametrize(
    ("cluster", "names"),
    [
        (cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS), {"c"}),
        (
            cluster_pb2.Cluster(
                name="c",
                type=cluster_pb2.Cluster.EDS,
                eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(service_name="svc"),
            ),
            {"svc"},
        ),
        (cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.STATIC), set()),
    ],
)
def test_eds_names_of_clusters(cluster: cluster_pb2.Cluster, names: set[str]) -> None:
    assert eds_names([Resource.of(cluster.name, cluster)]) == names
