"""Incremental ADS (``DeltaAggregatedResources``) as a synchronous state machine.

``DeltaStream`` holds, per type, the subscription and the version of every resource the
client has (``versions``); it does no I/O. The ADS server feeds it requests and asks it,
after every request or snapshot change, which responses to send. Rules, from the xDS
protocol doc ("Incremental xDS",
https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds):

- Subscriptions change by ``resource_names_subscribe``/``_unsubscribe`` in any request,
  whatever its nonce (they are deltas: ignoring one would lose it). A first request
  without names subscribes CDS/LDS as a wildcard; ``"*"`` subscribes any type as one.
- ``initial_resource_versions`` (first request of a type on a stream, after a reconnect)
  says what the client already has: only resources whose version differs are sent.
- Only added or changed resources are sent; a resource the client has that left the
  snapshot is named in ``removed_resources``. A name that does not exist is not answered
  (Envoy waits for it, then times out). Subscribing again to a name resends it, and so
  does a CDS update for its cluster: Envoy re-creates a changed cluster, which warms
  only on a fresh ClusterLoadAssignment, and over delta it does not ask for one.
- ``response_nonce`` equal to the response in flight answers it: ACK, or NACK when
  ``error_detail`` is set. Versions are recorded when sent, so rejected resources are not
  sent again until they change.
- Make-before-break: additions and updates of every type go out in ``ORDER`` (CDS, EDS,
  LDS, RDS), at most one response per type awaiting its answer, a held-back type holding
  back the ones after it; removals go out in later responses, once every type answered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from warmroute.xds.cache import StreamEvent
from warmroute.xds.snapshot import CLUSTER, ENDPOINT, ORDER, Resource, Resources, Snapshot
from warmroute.xds.subscription import Subscription, TypeState, eds_names, push_event

logger = logging.getLogger(__name__)

Outgoing = tuple[discovery_pb2.DeltaDiscoveryResponse, StreamEvent]


@dataclass(slots=True)
class _State(TypeState):
    versions: dict[str, str] = field(default_factory=dict)  # what the client has
    announced: str = ""  # system_version_info of the latest response
    greet: bool = False  # first wildcard request: answer even with nothing to send

    def removals(self, resources: Resources) -> list[str]:
        items = resources.items
        return [n for n in self.versions if n not in items]


class DeltaStream:
    """One delta ADS stream of node ``node_id``. Not thread-safe; owned by one stream task.

    ``on_request`` returns the ACK/NACK events to report; ``responses`` returns the
    responses to send now, in order, each with its "push" event, and records them as sent.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._types: dict[str, _State] = {}

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest, now: float) -> list[StreamEvent]:
        type_url = req.type_url
        st = self._types.get(type_url)
        if st is None:
            st = self._types[type_url] = _State(Subscription(type_url))
        events: list[StreamEvent] = []
        if req.response_nonce:
            if st.flight is not None and req.response_nonce == st.flight.nonce:
                error = req.error_detail.message if req.HasField("error_detail") else None
                events.append(st.settle(self.node_id, type_url, error, now))
            else:
                logger.debug(
                    "node %s: %s request with stale nonce %r (latest %r)",
                    self.node_id, type_url, req.response_nonce, st.nonce,
                )  # fmt: skip
        first = not st.requested
        st.requested = True
        subscribe = list(req.resource_names_subscribe)
        if first:
            st.versions = dict(req.initial_resource_versions)
        else:
            for name in subscribe:
                st.versions.pop(name, None)  # asked again: send it again
        dropped = st.sub.update(subscribe, req.resource_names_unsubscribe, first=first)
        _forget(st.versions, dropped)
        if first:
            _forget(st.versions, [n for n in st.versions if not st.sub.wants(n)])
            st.greet = st.sub.wildcard
        st.synced = None
        return events

    def responses(self, snapshot: Snapshot, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        blocked = False
        for type_url in self._order():
            st = self._types[type_url]
            resources = snapshot.of_type(type_url)
            updates = self._updates(st, resources)
            if updates is None:
                continue
            if st.flight is not None or blocked:
                blocked = True  # keep ORDER: nothing after a held-back update goes first
                continue
            out.append(self._send(type_url, st, resources.version, updates, [], now))
        if out or any(st.flight is not None for st in self._types.values()):
            return out
        # Every type answered: now remove what left the snapshots.
        for type_url in self._order():
            st = self._types[type_url]
            resources = snapshot.of_type(type_url)
            removed = st.removals(resources)
            if removed:
                out.append(self._send(type_url, st, resources.version, [], removed, now))
        return out

    def _order(self) -> list[str]:
        known = [t for t in ORDER if t in self._types]
        extra = sorted(t for t in self._types if t not in ORDER)
        return [t for t in known + extra if self._types[t].requested]

    def _updates(self, st: _State, resources: Resources) -> list[Resource] | None:
        """Resources to add or update now (possibly none, to answer a first wildcard
        request or announce a new version), or None for no response."""
        key = (resources.version, st.sub.generation)
        if st.synced == key:
            return None
        target = st.sub.select(resources)
        versions = st.versions
        updates = [r for n, r in target.items() if versions.get(n) != r.version]
        if updates or st.greet:
            return updates
        pending_removal = bool(st.removals(resources))
        if target and st.announced != resources.version and not pending_removal:
            # Nothing new for this client, but it should know it is on this version.
            return updates
        if not pending_removal:
            st.synced = key
        return None

    def _send(
        self,
        type_url: str,
        st: _State,
        version: str,
        updates: list[Resource],
        removed: list[str],
        now: float,
    ) -> Outgoing:
        st.greet = False
        st.announced = version
        for r in updates:
            st.versions[r.name] = r.version
        _forget(st.versions, removed)
        eds = self._types.get(ENDPOINT)
        if type_url == CLUSTER and updates and eds is not None:
            # Changed clusters warm only on a fresh ClusterLoadAssignment: resend theirs
            # (EDS follows CDS in ORDER, so in this same round).
            _forget(eds.versions, eds_names(updates))
            eds.synced = None
        nonce = st.launch(version, now)
        resp = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            nonce=nonce,
            removed_resources=removed,
        )
        for r in updates:
            # The Any was packed once in the snapshot: copied here, never re-encoded.
            resp.resources.add(name=r.name, version=r.version, resource=r.packed)
        return resp, push_event(self.node_id, type_url, version)


def _forget(versions: dict[str, str], names: Iterable[str]) -> None:
    for name in names:
        versions.pop(name, None)
