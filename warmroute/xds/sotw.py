"""State-of-the-world ADS (``StreamAggregatedResources``) as a synchronous state machine.

``SotwStream`` holds what one Envoy stream asked for and was sent; it does no I/O. The ADS
server (``warmroute.xds.ads``) feeds it requests (``on_request``) and asks it, after every
request or snapshot change, which responses to send (``responses``). Rules, from the xDS
protocol doc (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):

- Nothing is sent for a type until the client requested it, and at most one response per
  type awaits its ACK/NACK: the next one waits for that answer (as in go-control-plane,
  where each request opens one watch).
- A request whose ``response_nonce`` is not the latest nonce sent for its type is stale and
  changes nothing: the client has not seen our latest response and will answer it.
- ACK: the client holds what we sent. NACK (``error_detail`` set): it kept what it held;
  the rejected content is not sent again until the type's version (or the subscription)
  changes.
- CDS/LDS responses carry every resource the client should have (absent = deleted);
  EDS/RDS responses carry the subscribed resources that exist (absent = not yet known,
  Envoy waits). EDS/RDS are resent when the client asks for names it was not sent, or
  re-subscribes to the same names, and EDS right after a CDS update that changes one of
  its clusters (Envoy re-creates a changed cluster, which warms only on a fresh
  ClusterLoadAssignment); not when the set merely shrinks.
- Make-before-break: types go out in ``ORDER`` (CDS, EDS, LDS, RDS); a type whose update
  is held back by an unanswered response holds back the types after it. A CDS/LDS update
  that deletes resources is sent in two steps: first the union of what the client holds
  and the new set (version ``<version>+retained``), and only once every type has been
  answered, the exact new set (removal of stale resources last).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from warmroute.xds.cache import StreamEvent
from warmroute.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    ORDER,
    WILDCARD_TYPES,
    Resource,
    Resources,
    Snapshot,
)
from warmroute.xds.subscription import Subscription, TypeState, eds_names, push_event

logger = logging.getLogger(__name__)

RETAINED_SUFFIX = "+retained"

Outgoing = tuple[discovery_pb2.DiscoveryResponse, StreamEvent]


@dataclass(frozen=True, slots=True)
class _Sent:
    """The content of one response: ``basis`` is the type version it was built from."""

    version: str
    basis: str
    generation: int
    resources: Mapping[str, Resource]


@dataclass(slots=True)
class _State(TypeState):
    sent: _Sent | None = None  # the latest response: held, in flight or rejected
    held: _Sent | None = None  # what the client applied (last ACKed response)
    rejected: tuple[str, int] | None = None  # (basis, generation) of the last NACK
    client_version: str = ""  # version_info of the first request (from a previous stream)
    resend: bool = False  # the client re-requested its names: answer even if unchanged
    retained: frozenset[str] = field(default_factory=frozenset)

    def forget_unsubscribed(self) -> None:
        """SotW clients drop unsubscribed resources: forget we sent them, so a later
        re-subscription gets them again."""
        if not self.sub.wildcard:
            self.sent = _restrict(self.sent, self.sub.names)
            self.held = _restrict(self.held, self.sub.names)


def _same(a: Mapping[str, Resource], b: Mapping[str, Resource]) -> bool:
    """Same names with the same versions."""
    return a.keys() == b.keys() and all(r.version == b[n].version for n, r in a.items())


def _restrict(sent: _Sent | None, names: set[str]) -> _Sent | None:
    if sent is None:
        return None
    kept = {n: r for n, r in sent.resources.items() if n in names}
    return _Sent(sent.version, sent.basis, sent.generation, kept)


class SotwStream:
    """One SotW ADS stream of node ``node_id``. Not thread-safe; owned by one stream task.

    ``on_request`` returns the ACK/NACK events to report; ``responses`` returns the
    responses to send now, in order, each with its "push" event, and records them as sent.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._types: dict[str, _State] = {}

    def on_request(self, req: discovery_pb2.DiscoveryRequest, now: float) -> list[StreamEvent]:
        type_url = req.type_url
        st = self._types.get(type_url)
        if st is None:
            st = self._types[type_url] = _State(Subscription(type_url))
        if st.requested and req.response_nonce != st.nonce:
            logger.debug(
                "node %s: stale %s request (nonce %r, latest %r) ignored",
                self.node_id, type_url, req.response_nonce, st.nonce,
            )  # fmt: skip
            return []
        events: list[StreamEvent] = []
        answered = st.flight is not None
        if answered:
            error = req.error_detail.message if req.HasField("error_detail") else None
            if error is None:
                st.held = st.sent
            elif st.sent is not None:
                st.rejected = (st.sent.basis, st.sent.generation)
            events.append(st.settle(self.node_id, type_url, error, now))
        first = not st.requested
        st.requested = True
        if first:
            st.client_version = req.version_info
        before = set(st.sub.names)
        if st.sub.set_names(req.resource_names, first=first):
            st.forget_unsubscribed()
        if not (answered or first or type_url in WILDCARD_TYPES or st.sub.names < before):
            st.resend = True
        return events

    def responses(self, snapshot: Snapshot, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        blocked = False
        for type_url in self._order():
            st = self._types[type_url]
            plan = self._plan(st, snapshot.of_type(type_url))
            if plan is None:
                continue
            if st.flight is not None or blocked:
                blocked = True  # keep ORDER: nothing after a held-back update goes first
                continue
            out.append(self._send(type_url, st, plan, now))
        if out or any(st.flight is not None for st in self._types.values()):
            return out
        # Every type answered: now delete what the new versions dropped.
        for type_url in self._order():
            st = self._types[type_url]
            if not st.retained:
                continue
            resources = snapshot.of_type(type_url)
            st.retained = frozenset()
            if st.rejected == (resources.version, st.sub.generation):
                continue
            target = st.sub.select(resources)
            plan = _Sent(resources.version, resources.version, st.sub.generation, target)
            out.append(self._send(type_url, st, plan, now))
        return out

    def _order(self) -> list[str]:
        known = [t for t in ORDER if t in self._types]
        extra = sorted(t for t in self._types if t not in ORDER)
        return [t for t in known + extra if self._types[t].requested]

    def _plan(self, st: _State, resources: Resources) -> _Sent | None:
        """What to send for one type now, or None. Records ``synced`` when up to date."""
        key = (resources.version, st.sub.generation)
        if st.synced == key and not st.resend:
            return None
        if st.rejected == key:
            return None  # NACKed: wait for a new version or subscription
        target = st.sub.select(resources)
        if st.sub.type_url in WILDCARD_TYPES:
            return self._plan_complete(st, resources, target, key)
        return self._plan_named(st, resources, target, key)

    def _plan_complete(
        self,
        st: _State,
        resources: Resources,
        target: Mapping[str, Resource],
        key: tuple[str, int],
    ) -> _Sent | None:
        # CDS/LDS: every response is the complete set; absence deletes.
        if st.sent is None and st.client_version and st.client_version == resources.version:
            # Reconnected with the current version: it has all of it (wildcard only).
            st.sent = st.held = _Sent(resources.version, resources.version, key[1], target)
        held = st.held.resources if st.held is not None else {}
        stale = frozenset(n for n in held if n not in target)
        plan = _Sent(resources.version, resources.version, key[1], target)
        if stale:
            merged = dict(target)
            merged.update((n, held[n]) for n in stale)
            plan = _Sent(resources.version + RETAINED_SUFFIX, resources.version, key[1], merged)
        st.retained = stale
        sent = st.sent
        if sent is None:
            return plan
        if stale:
            # Nothing new to add before the removal: the removal step alone will do.
            return None if _same(plan.resources, sent.resources) else plan
        if sent.version == plan.version and sent.resources.keys() == plan.resources.keys():
            st.synced = key
            return None
        return plan

    def _plan_named(
        self,
        st: _State,
        resources: Resources,
        target: Mapping[str, Resource],
        key: tuple[str, int],
    ) -> _Sent | None:
        # EDS/RDS: the subscribed resources that exist; nothing to say about the others.
        sent = st.sent
        if not target:
            st.resend = False
            st.synced = key
            return None
        if (
            not st.resend
            and sent is not None
            and sent.basis == resources.version
            and target.keys() <= sent.resources.keys()
        ):
            st.synced = key
            return None
        return _Sent(resources.version, resources.version, key[1], target)

    def _send(self, type_url: str, st: _State, plan: _Sent, now: float) -> Outgoing:
        eds = self._types.get(ENDPOINT)
        if type_url == CLUSTER and eds is not None and eds.requested:
            # Changed clusters warm only on a fresh ClusterLoadAssignment: resend EDS
            # (after CDS in ORDER, so in this same round). Envoy's own re-request for them
            # then carries a stale nonce and is ignored.
            held = st.held.resources if st.held is not None else {}
            changed = [
                r
                for n, r in plan.resources.items()
                if n not in held or held[n].version != r.version
            ]
            if changed and any(eds.sub.wants(n) for n in eds_names(changed)):
                eds.resend = True
        st.sent = plan
        st.resend = False
        nonce = st.launch(plan.version, now)
        resp = discovery_pb2.DiscoveryResponse(
            version_info=plan.version, type_url=type_url, nonce=nonce
        )
        # The Any messages were packed once in the snapshot: copied here, never re-encoded.
        resp.resources.extend(r.packed for r in plan.resources.values())
        return resp, push_event(self.node_id, type_url, plan.version)
