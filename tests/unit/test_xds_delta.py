"""DeltaStream, the incremental ADS state machine, driven without a server: requests in,
responses and ACK/NACK events out. See the rules in ``warmroute/xds/delta.py``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from tests.integration.ads_client import cluster, endpoints, listener, route
from warmroute.xds.cache import EventKind, StreamEvent
from warmroute.xds.delta import DeltaStream
from warmroute.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Resources, Snapshot

SHORT = {CLUSTER: "C", ENDPOINT: "E", LISTENER: "L", ROUTE: "R"}
Response = Any  # discovery_pb2.DeltaDiscoveryResponse (protobuf stubs are untyped here)


def snap(
    clusters: Iterable[Resource] = (cluster("a"), cluster("b")),
    eds: Iterable[Resource] = (endpoints("a", "10.0.0.1:80"), endpoints("b", "10.0.0.2:80")),
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
    return {r.name for r in resp.resources}


def kinds(responses: Iterable[Response]) -> str:
    return "".join(SHORT[r.type_url] for r in responses)


class Client:
    """A scripted delta Envoy: keeps the resources it has (name -> version) per type."""

    def __init__(self, node: str = "n1") -> None:
        self.stream = DeltaStream(node)
        self.now = 0.0
        self.have: dict[str, dict[str, str]] = {}
        self.events: list[StreamEvent] = []

    def request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> list[StreamEvent]:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if error is not None:
            req.error_detail.message = error
        events = self.stream.on_request(req, self.now)
        self.events += events
        return events

    def send(self, snapshot: Snapshot) -> list[Response]:
        out = self.stream.responses(snapshot, self.now)
        for resp, event in out:
            assert (event.kind, event.type_url, event.version) == (
                EventKind.PUSH, resp.type_url, resp.system_version_info,
            )  # fmt: skip
        return [resp for resp, _ in out]

    def ack(self, resp: Response) -> list[StreamEvent]:
        have = self.have.setdefault(resp.type_url, {})
        for r in resp.resources:
            have[r.name] = r.version
        for name in resp.removed_resources:
            have.pop(name, None)
        return self.request(resp.type_url, nonce=resp.nonce)

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
    ("requests", "sent"),
    [
        ([], ""),
        ([(CLUSTER, [])], "C"),  # first request without names: legacy wildcard
        ([(ENDPOINT, [])], ""),  # EDS is never a legacy wildcard
        ([(ROUTE, ["r1"]), (CLUSTER, [])], "CR"),  # ORDER, not request order
        ([(LISTENER, []), (ROUTE, ["r1"]), (ENDPOINT, ["a"]), (CLUSTER, [])], "CELR"),
        ([(ENDPOINT, ["zz"])], ""),  # a name that does not exist is not answered
        ([(ENDPOINT, ["*"])], "E"),
    ],
)
def test_responses_for_what_was_subscribed_in_order(
    requests: list[tuple[str, list[str]]], sent: str
) -> None:
    c = Client()
    for type_url, subscribe in requests:
        c.request(type_url, subscribe)
    assert kinds(c.send(snap())) == sent


def test_first_wildcard_gets_everything_with_versions() -> None:
    s = snap()
    c = Client()
    c.request(CLUSTER)
    (cds,) = c.send(s)
    assert cds.system_version_info == s.version(CLUSTER)
    assert {r.name: r.version for r in cds.resources} == {
        n: r.version for n, r in s.of_type(CLUSTER).items.items()
    }
    assert list(cds.removed_resources) == []


def test_a_first_wildcard_request_is_answered_even_with_nothing_to_send() -> None:
    c = Client()
    c.request(CLUSTER)
    (cds,) = c.send(snap(clusters=[]))
    assert (names(cds), list(cds.removed_resources)) == (set(), [])


def test_only_what_changed_is_sent() -> None:
    c = Client()
    c.settle(snap())
    assert c.send(snap()) == []
    (eds,) = c.send(snap(eds=[endpoints("a", "10.0.0.7:80"), endpoints("b", "10.0.0.2:80")]))
    assert names(eds) == {"a"}


def test_initial_resource_versions_skip_what_the_client_has() -> None:
    s = snap()
    have = {n: r.version for n, r in s.of_type(CLUSTER).items.items()}
    c = Client()
    c.request(CLUSTER, initial={"a": have["a"], "b": "stale", "gone": "x"})
    (cds,) = c.send(s)
    assert names(cds) == {"b"}
    c.ack(cds)
    (removal,) = c.send(s)  # once every type answered, what left the snapshot goes
    assert (names(removal), list(removal.removed_resources)) == (set(), ["gone"])


def test_ack_and_nack_events_and_nacked_content_is_not_resent() -> None:
    c = Client()
    c.settle(snap())
    bad = snap(routes=[route("r1", "bad.example")])
    (rds,) = c.send(bad)
    c.now = 0.25
    (nack,) = c.nack(rds, "duplicate domain")
    assert (nack.kind, nack.type_url, nack.version, nack.error, nack.push_latency) == (
        EventKind.NACK, ROUTE, bad.version(ROUTE), "duplicate domain", 0.25,
    )  # fmt: skip
    assert c.send(bad) == []
    fixed = snap(routes=[route("r1", "good.example")])
    (again,) = c.send(fixed)
    (ack,) = c.ack(again)
    assert (ack.kind, ack.version) == (EventKind.ACK, fixed.version(ROUTE))


def test_a_stale_nonce_answers_nothing_but_its_subscription_counts() -> None:
    c = Client()
    s = snap(eds=[endpoints("a", "10.0.0.1:80"), endpoints("c", "10.0.0.3:80")])
    c.settle(s)
    s2 = snap(eds=[endpoints("a", "10.0.0.7:80"), endpoints("c", "10.0.0.3:80")])
    (eds,) = c.send(s2)
    assert c.request(ENDPOINT, ["c"], nonce="stale", error="late") == []
    assert c.send(s2) == []  # the push is still in flight
    (ack,) = c.ack(eds)
    assert ack.kind is EventKind.ACK
    (eds_c,) = c.send(s2)  # the subscription carried by the stale request was kept
    assert names(eds_c) == {"c"}


def test_one_response_per_type_in_flight_and_a_held_type_holds_later_ones() -> None:
    c = Client()
    c.settle(snap())
    s2 = snap(clusters=[cluster("a", timeout_s=2), cluster("b")])
    cds, eds = c.send(s2)  # a changed cluster brings a fresh EDS for it along
    assert (kinds([cds, eds]), names(eds)) == ("CE", {"a"})
    s3 = snap(clusters=[cluster("a", timeout_s=3), cluster("b")], listeners=[listener("l1", 1)])
    assert c.send(s3) == []
    c.ack(cds)
    c.ack(eds)
    assert kinds(c.send(s3)) == "CEL"


def test_removals_go_once_every_type_answered() -> None:
    c = Client()
    c.settle(snap())
    s2 = snap(
        clusters=[cluster("a"), cluster("c")],
        eds=[endpoints("a", "10.0.0.1:80"), endpoints("c", "10.0.0.3:80")],
        routes=[route("r1", "c.example")],
    )
    cds, rds = c.send(s2)
    assert (names(cds), list(cds.removed_resources)) == ({"c"}, [])  # b is kept for now
    c.ack(cds)
    assert c.send(s2) == []  # RDS unanswered
    c.ack(rds)
    out = c.send(s2)
    assert [(kinds([r]), list(r.removed_resources)) for r in out] == [("C", ["b"]), ("E", ["b"])]


def test_subscribing_again_resends_and_unsubscribing_forgets() -> None:
    c = Client()
    s = snap()
    c.settle(s)
    c.request(ENDPOINT, ["a"])
    (eds,) = c.send(s)
    assert names(eds) == {"a"}
    c.ack(eds)
    c.request(ENDPOINT, [], ["b"])
    assert c.send(s) == []  # the client forgets b itself: no removal is sent
    c.request(ENDPOINT, ["b"])
    (eds_b,) = c.send(s)
    assert names(eds_b) == {"b"}
