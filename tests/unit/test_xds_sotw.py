"""SotwStream, the SotW ADS state machine, driven without a server: requests in, responses
and ACK/NACK events out. See the rules in ``warmroute/xds/sotw.py``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from tests.integration.ads_client import cluster, endpoints, listener, resource_name, route
from warmroute.xds.cache import EventKind, StreamEvent
from warmroute.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Resources, Snapshot
from warmroute.xds.sotw import RETAINED_SUFFIX, SotwStream

SHORT = {CLUSTER: "C", ENDPOINT: "E", LISTENER: "L", ROUTE: "R"}
Response = Any  # discovery_pb2.DiscoveryResponse (protobuf stubs are untyped here)


def snap(
    clusters: Iterable[Resource] = (cluster("a"),),
    eds: Iterable[Resource] = (endpoints("a", "10.0.0.1:80"),),
    listeners: Iterable[Resource] = (listener("l1", 8080),),
    routes: Iterable[Resource] = (route("r1", "a.example"),),
) -> Snapshot:
    return Snapshot(
        {
            CLUSTER: Resources.of(clusters),
            ENDPOINT: Resources.of(eds),
            LISTENER: Resources.of(listeners),
            ROUTE: Resources.of(routes),
        }
    )


def names(resp: Response) -> set[str]:
    return {resource_name(a) for a in resp.resources}


def kinds(responses: Iterable[Response]) -> str:
    return "".join(SHORT[r.type_url] for r in responses)


class Client:
    """A scripted Envoy: remembers the latest nonce, accepted version and names per type."""

    def __init__(self, node: str = "n1") -> None:
        self.stream = SotwStream(node)
        self.now = 0.0
        self.nonces: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.names: dict[str, list[str]] = {}
        self.events: list[StreamEvent] = []

    def request(
        self,
        type_url: str,
        names: Iterable[str] | None = None,
        *,
        nonce: str | None = None,
        error: str | None = None,
        version: str | None = None,
    ) -> list[StreamEvent]:
        if names is not None:
            self.names[type_url] = list(names)
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self.names.get(type_url, []),
            response_nonce=self.nonces.get(type_url, "") if nonce is None else nonce,
            version_info=self.versions.get(type_url, "") if version is None else version,
        )
        if error is not None:
            req.error_detail.message = error
        events = self.stream.on_request(req, self.now)
        self.events += events
        return events

    def send(self, snapshot: Snapshot) -> list[Response]:
        """What the server sends now; the push events are checked against the responses."""
        out = self.stream.responses(snapshot, self.now)
        for resp, event in out:
            self.nonces[resp.type_url] = resp.nonce
            assert (event.kind, event.type_url, event.version) == (
                EventKind.PUSH, resp.type_url, resp.version_info,
            )  # fmt: skip
        return [resp for resp, _ in out]

    def ack(self, resp: Response, names: Iterable[str] | None = None) -> list[StreamEvent]:
        self.versions[resp.type_url] = resp.version_info
        return self.request(resp.type_url, names, nonce=resp.nonce)

    def nack(self, resp: Response, error: str = "rejected") -> list[StreamEvent]:
        return self.request(resp.type_url, nonce=resp.nonce, error=error)

    def settle(self, snapshot: Snapshot) -> None:
        """Subscribe like Envoy (CDS, LDS wildcard; EDS, RDS named) and ACK everything."""
        self.request(CLUSTER)
        self.request(LISTENER)
        self.request(ENDPOINT, ["a", "b"])
        self.request(ROUTE, ["r1"])
        while out := self.send(snapshot):
            for resp in out:
                self.ack(resp)


@pytest.mark.parametrize(
    ("requested", "sent"),
    [
        ([], ""),  # nothing until asked
        ([(CLUSTER, None)], "C"),
        ([(ROUTE, ["r1"]), (CLUSTER, None)], "CR"),  # ORDER, not request order
        ([(LISTENER, None), (ROUTE, ["r1"]), (ENDPOINT, ["a"]), (CLUSTER, None)], "CELR"),
        ([(ENDPOINT, [])], ""),  # EDS is never a legacy wildcard
        ([(ENDPOINT, ["zz"])], ""),  # a name that does not exist is not answered
        ([(ENDPOINT, ["*"])], "E"),
    ],
)
def test_responses_for_what_was_requested_in_order(
    requested: list[tuple[str, list[str] | None]], sent: str
) -> None:
    c = Client()
    for type_url, wanted in requested:
        c.request(type_url, wanted)
    assert kinds(c.send(snap())) == sent


def test_wildcard_gets_everything_named_gets_what_exists() -> None:
    c = Client()
    s = snap(
        clusters=[cluster("a"), cluster("b")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("b", "10.0.0.2:80")],
    )
    c.request(CLUSTER)
    c.request(ENDPOINT, ["a", "zz"])
    cds, eds = c.send(s)
    assert (names(cds), names(eds)) == ({"a", "b"}, {"a"})
    assert (cds.version_info, eds.version_info) == (s.version(CLUSTER), s.version(ENDPOINT))
    c.ack(cds)
    c.ack(eds)
    # zz appears: the subscription remembered it.
    s2 = snap(
        clusters=[cluster("a"), cluster("b")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("zz", "10.0.0.9:80")],
    )
    (eds2,) = c.send(s2)
    assert names(eds2) == {"a", "zz"}


def test_ack_and_nack_events_with_latency() -> None:
    c = Client()
    s = snap()
    c.request(CLUSTER)
    (cds,) = c.send(s)
    c.now = 0.5
    (ack,) = c.ack(cds)
    assert (ack.kind, ack.type_url, ack.version, ack.push_latency) == (
        EventKind.ACK, CLUSTER, s.version(CLUSTER), 0.5,
    )  # fmt: skip
    bad = snap(clusters=[cluster("a", timeout_s=9)])
    (cds2,) = c.send(bad)
    (nack,) = c.nack(cds2, "bad cluster")
    assert (nack.kind, nack.version, nack.error) == (
        EventKind.NACK, bad.version(CLUSTER), "bad cluster",
    )  # fmt: skip


def test_nacked_content_is_not_resent_until_it_changes() -> None:
    c = Client()
    c.settle(snap())
    bad = snap(routes=[route("r1", "bad.example")])
    (rds,) = c.send(bad)
    c.nack(rds)
    assert c.send(bad) == []
    fixed = snap(routes=[route("r1", "good.example")])
    (again,) = c.send(fixed)
    assert (again.type_url, again.version_info) == (ROUTE, fixed.version(ROUTE))


def test_one_response_per_type_in_flight_and_a_held_type_holds_later_ones() -> None:
    c = Client()
    c.settle(snap())
    s2 = snap(clusters=[cluster("a", timeout_s=2)])
    (cds, eds) = c.send(s2)  # a changed cluster brings a fresh EDS along
    assert kinds([cds, eds]) == "CE"
    s3 = snap(clusters=[cluster("a", timeout_s=3)], listeners=[listener("l1", 9090)])
    assert c.send(s3) == []  # CDS unanswered: neither it nor LDS after it goes out
    c.ack(cds)
    c.ack(eds)
    assert kinds(c.send(s3)) == "CEL"


@pytest.mark.parametrize("error", [None, "late complaint"])
def test_a_stale_nonce_changes_nothing(error: str | None) -> None:
    c = Client()
    c.settle(snap())
    old = c.nonces[ENDPOINT]
    s2 = snap(eds=[endpoints("a", "10.0.0.7:80")])
    (eds,) = c.send(s2)
    assert c.request(ENDPOINT, ["a", "b", "zz"], nonce=old, error=error) == []
    (ack,) = c.ack(eds)  # the push was still in flight
    assert (ack.kind, ack.version) == (EventKind.ACK, s2.version(ENDPOINT))


def test_unchanged_versions_are_not_pushed_and_changes_only_their_type() -> None:
    c = Client()
    c.settle(snap())
    assert c.send(snap()) == []
    assert kinds(c.send(snap(listeners=[listener("l1", 8081)]))) == "L"


def test_a_removed_cluster_goes_last_in_two_steps() -> None:
    c = Client()
    c.settle(snap(clusters=[cluster("a"), cluster("b")]))
    s2 = snap(clusters=[cluster("a"), cluster("c")], routes=[route("r1", "c.example")])
    cds, rds = c.send(s2)
    assert cds.version_info == s2.version(CLUSTER) + RETAINED_SUFFIX
    assert names(cds) == {"a", "b", "c"}  # make before break: b is still there
    c.ack(cds)
    assert c.send(s2) == []  # RDS unanswered: b stays
    c.ack(rds)
    (final,) = c.send(s2)
    assert (final.version_info, names(final)) == (s2.version(CLUSTER), {"a", "c"})
    c.ack(final)
    assert c.send(s2) == []


def test_a_changed_cluster_gets_a_fresh_eds_even_if_endpoints_did_not_change() -> None:
    c = Client()
    s = snap()
    c.settle(s)
    s2 = snap(clusters=[cluster("a", timeout_s=5)])
    assert s2.version(ENDPOINT) == s.version(ENDPOINT)
    cds, eds = c.send(s2)
    assert (kinds([cds, eds]), names(eds)) == ("CE", {"a"})


def test_rerequesting_the_same_names_is_answered_a_smaller_set_is_not() -> None:
    c = Client()
    s = snap(
        clusters=[cluster("a"), cluster("b")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("b", "10.0.0.2:80")],
    )
    c.settle(s)
    c.request(ENDPOINT, ["a", "b"])  # same names, latest nonce: Envoy wants them again
    (eds,) = c.send(s)
    assert names(eds) == {"a", "b"}
    c.ack(eds, ["a"])  # a smaller set needs no response
    assert c.send(s) == []
    c.request(ENDPOINT, ["a", "b"])  # b again: the client dropped it, so it is resent
    (eds2,) = c.send(s)
    assert names(eds2) == {"a", "b"}


def test_reconnect_with_the_current_version_is_not_resent() -> None:
    s = snap()
    c = Client()
    c.request(CLUSTER, version=s.version(CLUSTER))
    c.request(LISTENER, version="old")
    assert kinds(c.send(s)) == "L"
