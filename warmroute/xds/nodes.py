"""What the control plane knows about each Envoy node: one table, written by ADS only.

``NodeTable`` holds a ``NodeState`` per node id: the Envoy Node's cluster, its open ADS
streams, since when it is connected, the version it ACKed and the one awaiting its answer
per type URL, and its last NACK. The ADS server (``warmroute.xds.ads``) records every
``StreamEvent`` here *before* its observers hear of it, so an observer reacting to an
event (the rollout, the endpoint gate, metrics, the admin ``/xds`` status) reads a table
that already includes it; none of them keeps its own copy.

A node whose last stream ends stays in the table, disconnected, with what it ACKed: Envoy
keeps its config while the control plane is away, and a rollout still knows which version
the node is on. The ``keep_disconnected`` most recently disconnected nodes are kept; older
ones are forgotten so node ids of replaced pods do not pile up.

Pure bookkeeping over events and the time the caller passes; runs on one event loop, not
thread-safe. Readers must not alter what they get.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from warmroute.xds.cache import EventKind, StreamEvent

_KEEP_DISCONNECTED = 256


@dataclass(frozen=True, slots=True)
class Nack:
    """A response the node rejected (it kept what it had)."""

    type_url: str
    version: str
    error: str
    at: float  # clock time the NACK arrived


@dataclass(slots=True)
class NodeState:
    """One Envoy node. Owned by ``NodeTable``; read-only for everyone else."""

    node_id: str
    cluster: str = ""  # the Envoy Node's ``cluster`` (from its first request)
    streams: int = 0  # open ADS streams (more than one while a reconnect overlaps)
    connected_since: float | None = None  # clock time its streams went from 0 to 1
    acked: dict[str, str] = field(default_factory=dict)  # type_url -> version applied
    pending: dict[str, str] = field(default_factory=dict)  # type_url -> version pushed, unanswered
    last_nack: Nack | None = None

    @property
    def connected(self) -> bool:
        return self.streams > 0

    def has_acked(self, type_url: str, version: str) -> bool:
        return self.acked.get(type_url) == version


class NodeTable:
    """Every Envoy node ADS has seen, by node id. See the module docstring."""

    def __init__(self, *, keep_disconnected: int = _KEEP_DISCONNECTED) -> None:
        self._nodes: dict[str, NodeState] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()  # disconnected, oldest first
        self._keep = keep_disconnected

    def record(self, event: StreamEvent, now: float) -> NodeState:
        """Apply one stream event (``now`` in the caller's clock); returns the node."""
        node = self._nodes.get(event.node_id)
        if node is None:
            node = self._nodes[event.node_id] = NodeState(event.node_id)
        kind = event.kind
        if kind is EventKind.CONNECT:
            if node.streams == 0:
                node.connected_since = now
                self._gone.pop(node.node_id, None)
            node.streams += 1
            if event.cluster:
                node.cluster = event.cluster
        elif kind is EventKind.DISCONNECT:
            node.streams = max(0, node.streams - 1)
            if node.streams == 0:
                # Nothing is in flight any more: the streams that sent it are gone.
                node.pending.clear()
                node.connected_since = None
                self._forget_old(node.node_id)
        elif kind is EventKind.PUSH:
            node.pending[event.type_url] = event.version
        else:
            if node.pending.get(event.type_url) == event.version:
                del node.pending[event.type_url]
            if kind is EventKind.ACK:
                node.acked[event.type_url] = event.version
            else:
                node.last_nack = Nack(event.type_url, event.version, event.error, now)
        return node

    def _forget_old(self, node_id: str) -> None:
        self._gone[node_id] = None
        self._gone.move_to_end(node_id)
        while len(self._gone) > self._keep:
            old, _ = self._gone.popitem(last=False)
            self._nodes.pop(old, None)

    # -- reading ---------------------------------------------------------------------------

    def get(self, node_id: str) -> NodeState | None:
        return self._nodes.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __iter__(self) -> Iterator[NodeState]:
        """Every node, connected or not, sorted by id."""
        return iter([self._nodes[n] for n in sorted(self._nodes)])

    def __len__(self) -> int:
        return len(self._nodes)

    def connected(self) -> list[str]:
        """Ids of the nodes with an open stream, sorted."""
        return sorted(n for n, s in self._nodes.items() if s.streams > 0)

    def is_connected(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.streams > 0

    def acked(self, node_id: str, type_url: str) -> str:
        """The version of ``type_url`` the node ACKed last ("" if none or unknown node)."""
        node = self._nodes.get(node_id)
        return "" if node is None else node.acked.get(type_url, "")

    def status(self, now: float) -> dict[str, dict[str, Any]]:
        """JSON-ready, per node id: what the admin ``/xds`` endpoint shows of each node.
        Type URLs are shortened to their message name (``Cluster``, ``Listener``...)."""
        out: dict[str, dict[str, Any]] = {}
        for node in self:
            nack = node.last_nack
            since = node.connected_since
            out[node.node_id] = {
                "connected": node.connected,
                "cluster": node.cluster,
                "streams": node.streams,
                "connected_seconds": None if since is None else round(now - since, 3),
                "acked": {short_type(t): v for t, v in node.acked.items()},
                "in_flight": {short_type(t): v for t, v in node.pending.items()},
                "last_nack": nack.error if nack else "",
                "last_nack_type": short_type(nack.type_url) if nack else "",
                "last_nack_version": nack.version if nack else "",
                "last_nack_seconds_ago": None if nack is None else round(now - nack.at, 3),
            }
        return out


def short_type(type_url: str) -> str:
    """``type.googleapis.com/envoy.config.cluster.v3.Cluster`` -> ``Cluster``."""
    return type_url.rsplit(".", 1)[-1]
