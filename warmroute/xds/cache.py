"""Which snapshot each Envoy node should have, and who to tell when that changes.

The ADS servers see the config plane only through this class (as go-control-plane's
servers see ``ConfigWatcher``): ``snapshot_for(node)`` and ``changed()``. Rollouts decide
per node (canaries) by calling ``assign``; endpoint updates replace EDS everywhere with
``set_endpoints``. Runs on one event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from warmroute.xds.snapshot import ENDPOINT, Resources, Snapshot


class SnapshotCache:
    def __init__(self) -> None:
        self._default = Snapshot()
        self._by_node: dict[str, Snapshot] = {}
        self._endpoints = Resources.of(())
        self._event = asyncio.Event()

    def snapshot_for(self, node_id: str, cluster: str = "") -> Snapshot:
        """What this node should have: its version (pinned or default) as the node gets it
        (``Snapshot.for_node``: its own listener, if ``envoy.nodes`` gives it one), with the
        current endpoints."""
        base = self._by_node.get(node_id, self._default)
        return base.for_node(node_id, cluster).with_type(ENDPOINT, self._endpoints)

    @property
    def default(self) -> Snapshot:
        return self._default

    def set_default(self, snapshot: Snapshot) -> None:
        """The config every node gets unless ``assign`` pinned it to another one."""
        self._default = snapshot
        self._notify()

    def assign(self, node_ids: Iterable[str], snapshot: Snapshot | None) -> None:
        """Pin nodes to ``snapshot`` (None: back to the default)."""
        for node in node_ids:
            if snapshot is None:
                self._by_node.pop(node, None)
            else:
                self._by_node[node] = snapshot
        self._notify()

    def set_endpoints(self, endpoints: Resources) -> None:
        """Endpoints follow the registry, whatever config version a node is on."""
        if endpoints.version == self._endpoints.version:
            return
        self._endpoints = endpoints
        self._notify()

    async def changed(self) -> None:
        """Return at the next change (of any node's snapshot)."""
        await self._event.wait()

    def _notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


class EventKind(enum.Enum):
    """What happened on an ADS stream."""

    CONNECT = "connect"  # a stream of the node opened (its first request named the node)
    DISCONNECT = "disconnect"  # a stream of the node ended
    PUSH = "push"  # a response was written
    ACK = "ack"  # the node applied the response in flight
    NACK = "nack"  # the node rejected it (``error`` says why) and kept what it had


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """What an ADS stream learned from its Envoy, reported to observers.

    ``type_url`` and ``version`` are empty for CONNECT/DISCONNECT; ``cluster`` (the Envoy
    Node's ``cluster``) is set on CONNECT only.
    """

    node_id: str
    type_url: str
    version: str
    kind: EventKind
    error: str = ""
    push_latency: float | None = None  # seconds from push to ACK/NACK
    cluster: str = ""


class StreamObserver(Protocol):
    def on_stream_event(self, event: StreamEvent) -> None: ...
