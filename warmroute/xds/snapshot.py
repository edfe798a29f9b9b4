"""Immutable, versioned sets of xDS resources, marshalled and hashed once.

A ``Snapshot`` holds, per type URL, the resources one Envoy should have. Versions are
content hashes: rebuilding identical resources yields identical versions, so nothing is
pushed for a no-op change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2, message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

# Make-before-break: a cluster before its endpoints, a listener before its routes.
ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
# Types Envoy subscribes to as a wildcard (all resources); the others it names.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource, packed into an ``Any`` once, with a content version."""

    name: str
    type_url: str
    packed: any_pb2.Any
    version: str

    @classmethod
    def of(cls, name: str, msg: message.Message) -> Resource:
        packed = any_pb2.Any()
        packed.Pack(msg)
        digest = hashlib.blake2b(packed.value, digest_size=8).hexdigest()
        return cls(name, packed.type_url, packed, digest)


@dataclass(frozen=True, slots=True)
class Resources:
    """All resources of one type; ``version`` hashes their names and versions."""

    items: Mapping[str, Resource]
    version: str

    @classmethod
    def of(cls, resources: Iterable[Resource]) -> Resources:
        items = {r.name: r for r in resources}
        h = hashlib.blake2b(digest_size=8)
        for name in sorted(items):
            h.update(name.encode())
            h.update(items[name].version.encode())
        return cls(MappingProxyType(items), h.hexdigest())


_EMPTY = Resources.of(())


@dataclass(frozen=True, slots=True)
class NodeOverride:
    """Resources of one type that replace the snapshot's for some nodes: those whose id is
    ``node_id``, or (if no override names their id) whose cluster is ``cluster``."""

    type_url: str
    resources: Resources
    node_id: str | None = None
    cluster: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Resources by type URL. ``label`` names the config version it came from.

    ``overrides`` give some nodes their own resources of a type (their own listener
    address): ``for_node`` is what one node gets; every per-node comparison of versions
    (ACKs, NACKs) must go through it.
    """

    resources: Mapping[str, Resources] = field(default_factory=dict)
    label: str = ""
    overrides: tuple[NodeOverride, ...] = ()

    def of_type(self, type_url: str) -> Resources:
        return self.resources.get(type_url, _EMPTY)

    def version(self, type_url: str) -> str:
        return self.of_type(type_url).version

    def with_type(self, type_url: str, resources: Resources) -> Snapshot:
        merged = dict(self.resources)
        merged[type_url] = resources
        return Snapshot(MappingProxyType(merged), self.label, self.overrides)

    def for_node(self, node_id: str, cluster: str = "") -> Snapshot:
        """The snapshot as this node gets it (itself when no override applies)."""
        if not self.overrides:
            return self
        chosen: dict[str, Resources] = {}
        for o in self.overrides:  # by cluster first, so that an id match replaces it
            if o.cluster is not None and o.cluster == cluster:
                chosen.setdefault(o.type_url, o.resources)
        for o in self.overrides:
            if o.node_id is not None and o.node_id == node_id:
                chosen[o.type_url] = o.resources
        if not chosen:
            return self
        merged = dict(self.resources)
        merged.update(chosen)
        return Snapshot(MappingProxyType(merged), self.label)
