"""Per-stream, per-type subscription state shared by the SotW and delta ADS streams.

What a stream holds for one type URL (as go-control-plane's ``stream/v3/subscription.go``):
which names the client wants (wildcard and/or explicit names), the nonce of the latest
response and whether that response still awaits its ACK/NACK. The protocol-specific parts
(what the client holds, when to respond) live in ``sotw`` and ``delta``.

Wildcard rules follow the xDS protocol doc ("How the client specifies what resources to
return", https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):
- ``"*"`` among the names subscribes to every resource of the type (any type);
- a first request with no names is a *legacy* wildcard subscription, but only for the
  types Envoy subscribes to that way (``WILDCARD_TYPES``: CDS and LDS);
- in SotW a later request with no names keeps a legacy wildcard and otherwise means
  "nothing"; in delta, ``"*"`` in ``resource_names_unsubscribe`` ends the wildcard.

Nothing here is safe across threads; a stream owns its states and runs on one event loop.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2

from warmroute.xds.cache import EventKind, StreamEvent
from warmroute.xds.snapshot import WILDCARD_TYPES, Resource, Resources

WILDCARD = "*"

# A process-wide prefix keeps nonces unique across restarts of the control plane too, so a
# reconnecting client can never present an old nonce that matches a new one.
_NONCE_PREFIX = secrets.token_hex(4)
_nonces = itertools.count(1)


def new_nonce() -> str:
    """A nonce never handed out before by this process."""
    return f"{_NONCE_PREFIX}-{next(_nonces):x}"


@dataclass(slots=True)
class Subscription:
    """Which resources of one type a client wants.

    ``generation`` increases on every change, so callers can cache work per generation.
    """

    type_url: str
    wildcard: bool = False
    legacy_wildcard: bool = False
    names: set[str] = field(default_factory=set)
    generation: int = 0

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def select(self, resources: Resources) -> Mapping[str, Resource]:
        """The resources this subscription covers that exist. For a wildcard this is
        ``resources.items`` itself (read-only, not copied); never alter the result."""
        if self.wildcard:
            return resources.items
        items = resources.items
        return {n: items[n] for n in self.names if n in items}

    def set_names(self, names: Iterable[str], *, first: bool) -> bool:
        """SotW: the request's ``resource_names`` replace the subscription. Returns
        whether anything changed."""
        requested = set(names)
        legacy = (
            not requested and self.type_url in WILDCARD_TYPES and (first or self.legacy_wildcard)
        )
        wildcard = legacy or WILDCARD in requested
        requested.discard(WILDCARD)
        return self._replace(wildcard, legacy, requested)

    def update(
        self, subscribe: Iterable[str], unsubscribe: Iterable[str], *, first: bool
    ) -> set[str]:
        """Delta: apply ``resource_names_subscribe``/``_unsubscribe``. Returns the names
        no longer wanted (the client forgets them without being told)."""
        add, drop = set(subscribe), set(unsubscribe)
        wildcard, legacy = self.wildcard, self.legacy_wildcard
        if first and not add and self.type_url in WILDCARD_TYPES:
            wildcard = legacy = True
        if WILDCARD in add:
            wildcard, legacy = True, False
        if WILDCARD in drop:
            wildcard = legacy = False
        add.discard(WILDCARD)
        drop.discard(WILDCARD)
        if add and legacy:
            # Explicit names after a legacy wildcard: the client still wants everything
            # (it never said otherwise), now as an explicit wildcard.
            legacy = False
        names = (self.names | add) - drop
        before = set(self.names)
        self._replace(wildcard, legacy, names)
        return {n for n in before | drop if not self.wants(n)}

    def _replace(self, wildcard: bool, legacy: bool, names: set[str]) -> bool:
        if (wildcard, names) == (self.wildcard, self.names):
            self.legacy_wildcard = legacy
            return False
        self.wildcard, self.legacy_wildcard, self.names = wildcard, legacy, names
        self.generation += 1
        return True


@dataclass(frozen=True, slots=True)
class Flight:
    """A response sent and not yet ACKed or NACKed."""

    nonce: str
    version: str
    sent_at: float


@dataclass(slots=True)
class TypeState:
    """One type URL on one stream: the subscription, the latest nonce, the response in
    flight (at most one: we answer again only after the client answered), and ``synced``,
    the (type version, subscription generation) at which nothing was left to send."""

    sub: Subscription
    requested: bool = False
    nonce: str = ""
    flight: Flight | None = None
    synced: tuple[str, int] | None = None

    def settle(self, node_id: str, type_url: str, error: str | None, now: float) -> StreamEvent:
        """The client answered the response in flight: an ACK (``error`` None) or a NACK.
        Returns the event to report; the caller must have checked the nonce."""
        flight = self.flight
        assert flight is not None
        self.flight = None
        self.synced = None
        latency = now - flight.sent_at
        if error is None:
            return StreamEvent(
                node_id, type_url, flight.version, EventKind.ACK, push_latency=latency
            )
        return StreamEvent(
            node_id, type_url, flight.version, EventKind.NACK, error=error, push_latency=latency
        )

    def launch(self, version: str, now: float) -> str:
        """Record a response about to be sent; returns its fresh nonce."""
        self.nonce = new_nonce()
        self.flight = Flight(self.nonce, version, now)
        self.synced = None
        return self.nonce


def push_event(node_id: str, type_url: str, version: str) -> StreamEvent:
    return StreamEvent(node_id, type_url, version, EventKind.PUSH)


def eds_names(clusters: Iterable[Resource]) -> set[str]:
    """The EDS resource names these clusters take their endpoints from.

    Envoy re-creates a cluster that changes, and the new one warms only on a *fresh*
    ClusterLoadAssignment, even an unchanged one; over delta ADS it does not ask again, so
    the server must resend it (https://www.envoyproxy.io/docs/envoy/latest/api-docs/
    xds_protocol#resource-warming). Parses the packed clusters: call for changed ones only.
    """
    names = set()
    for r in clusters:
        c = cluster_pb2.Cluster.FromString(r.packed.value)
        if c.type == cluster_pb2.Cluster.EDS:
            names.add(c.eds_cluster_config.service_name or c.name)
    return names
