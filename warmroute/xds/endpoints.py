"""Endpoints follow the registry, and a replica is leasable only once Envoy has it.

Discovery events pass through here on their way to the registry:
  * WARM is held back: the replica is published in EDS (HEALTHY) and becomes leasable in
    the registry only when every connected Envoy has ACKed an EDS version containing it.
    Leasing earlier would pin a request to a host Envoy does not know, and override_host
    would fall back to another, possibly busy, replica.
  * anything else (LOADING, DRAINING, removal) reaches the registry at once, so leasing
    stops first; then EDS drops the replica (LOADING, gone) or marks it DRAINING.
A removed replica with requests still in flight stays in EDS as DRAINING until they end.

Which nodes are connected and which EDS version each ACKed is read from the ADS server's
``NodeTable`` (updated before this publisher hears of an event); this class keeps only
which replicas each recent EDS version contains.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from warmroute.state import (
    Phase,
    Registry,
    Replica,
    ReplicaEvent,
    ReplicaExternalLoad,
    ReplicaUpsert,
)
from warmroute.xds.builder import endpoint_resources
from warmroute.xds.cache import EventKind, SnapshotCache, StreamEvent
from warmroute.xds.nodes import NodeTable
from warmroute.xds.resources import Endpoint
from warmroute.xds.snapshot import ENDPOINT

logger = logging.getLogger(__name__)

_Key = tuple[str, str]  # (pool, address)
_KEEP_VERSIONS = 256


class EndpointPublisher:
    """Discovery's events in (``emit``), EDS and the registry out; stream events in
    (``on_stream_event``) release held-back replicas. ``on_routable(pool, address,
    seconds_held)`` is called when one becomes leasable. Runs on one event loop; not
    thread-safe.
    """

    def __init__(
        self,
        registry: Registry,
        cache: SnapshotCache,
        on_routable: Callable[[str, str, float], None] | None = None,
        *,
        nodes: NodeTable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._cache = cache
        self._on_routable = on_routable
        self._nodes = nodes
        self._clock = clock
        self._warm: dict[_Key, int] = {}  # replicas discovery calls warm -> slots
        self._pending: dict[_Key, tuple[int, float]] = {}  # held-back WARM: slots, since
        self._versions: OrderedDict[str, frozenset[_Key]] = OrderedDict()

    # -- discovery side --------------------------------------------------------------------

    def emit(self, event: ReplicaEvent) -> None:
        if isinstance(event, ReplicaExternalLoad):
            self._registry.apply(event)
            return
        key = (event.pool, event.address)
        if isinstance(event, ReplicaUpsert) and event.phase is Phase.WARM:
            self._warm[key] = event.slots
            replica = self._replica(key)
            if replica is not None and replica.phase is Phase.WARM:
                self._registry.apply(event)  # slots changed on a routable replica
            else:
                if replica is None:
                    self._registry.apply(
                        ReplicaUpsert(event.pool, event.address, event.slots, Phase.LOADING)
                    )
                self._pending[key] = (event.slots, self._clock())
        else:
            self._warm.pop(key, None)
            self._pending.pop(key, None)
            self._registry.apply(event)
        self.publish()

    def publish(self) -> None:
        """Rebuild EDS from the desired state (cheap: unchanged content is not pushed)."""
        registry = self._registry
        names = registry.pool_names()
        by_pool: dict[str, list[Endpoint]] = {name: [] for name in names}
        for pool_name, address in self._warm:
            by_pool.setdefault(pool_name, []).append(Endpoint(address))
        for name in names:
            load = registry.load(name)
            for replica in load.replicas if load is not None else ():
                if (name, replica.address) in self._warm:
                    continue
                # EDS membership is per pool's cluster: this pool's own leases keep it.
                if replica.phase is Phase.DRAINING or replica.in_flight:
                    by_pool[name].append(Endpoint(replica.address, draining=True))
        eds = endpoint_resources(names, by_pool)
        if eds.version not in self._versions:
            self._versions[eds.version] = frozenset(self._warm)
            while len(self._versions) > _KEEP_VERSIONS:
                self._versions.popitem(last=False)
        self._cache.set_endpoints(eds)
        self._release()

    # -- Envoy side ------------------------------------------------------------------------

    def on_stream_event(self, event: StreamEvent) -> None:
        """An EDS ACK may complete what a held-back replica waits for; a disconnect may
        remove the last node it waited for."""
        kind = event.kind
        if kind is EventKind.DISCONNECT or (kind is EventKind.ACK and event.type_url == ENDPOINT):
            self._release()

    def _release(self) -> None:
        if not self._pending:
            return
        nodes = self._nodes
        views = [
            self._versions.get(nodes.acked(node, ENDPOINT), frozenset())
            for node in nodes.connected()
        ]
        for key in [k for k in self._pending if all(k in v for v in views)]:
            slots, since = self._pending.pop(key)
            self._registry.apply(ReplicaUpsert(key[0], key[1], slots, Phase.WARM))
            waited = self._clock() - since
            logger.info(
                "replica %s (pool %s) routable: %d Envoy(s) acked it in %.1f ms",
                key[1], key[0], len(views), waited * 1e3,
            )  # fmt: skip
            if self._on_routable is not None:
                self._on_routable(key[0], key[1], waited)

    def _replica(self, key: _Key) -> Replica | None:
        return self._registry.replica(*key)
