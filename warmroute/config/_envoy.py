"""``envoy:``: where the Envoys warmroute configures listen and serve admin (per node or node
cluster too), and how the bundled Envoy runs.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from warmroute.config._base import HostPort, StrictModel, located


class EnvoyNodeConfig(StrictModel):
    """Settings for some Envoys of the fleet, chosen by node id or by node cluster (the
    bootstrap's ``node.cluster``, e.g. one per zone): several Envoys per host, or a
    different port per zone. An entry matching the node's id wins over one matching its
    cluster; unset keys fall back to ``envoy``'s."""

    id: str | None = None
    cluster: str | None = None
    listen: HostPort | None = None
    admin: HostPort | None = None

    @model_validator(mode="after")
    def _one_match(self) -> EnvoyNodeConfig:
        if (self.id is None) == (self.cluster is None):
            raise ValueError("give exactly one of `id` or `cluster` to choose the nodes")
        return self


class NodeAddresses(NamedTuple):
    listen: str
    admin: str


class EnvoyConfig(StrictModel):
    listen: HostPort = "127.0.0.1:8080"
    admin: HostPort = "127.0.0.1:19000"
    # Per-node overrides of `listen` and `admin`, by node id or node cluster.
    nodes: list[EnvoyNodeConfig] = []
    binary: str | None = None
    log_level: Literal["trace", "debug", "info", "warning", "error", "critical", "off"] = "warning"
    concurrency: int = Field(default=2, ge=1, le=256)
    # A client must finish sending its request headers within this time (slow clients
    # cannot hold connections; no slot is leased before the headers are complete).
    request_headers_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _distinct_nodes(self) -> EnvoyConfig:
        seen: set[tuple[str, str]] = set()
        for i, node in enumerate(self.nodes):
            key = ("id", node.id) if node.id is not None else ("cluster", node.cluster or "")
            if key in seen:
                raise located(
                    f"{key[0]} {key[1]!r} is already chosen by an earlier entry", "nodes", i, key[0]
                )
            seen.add(key)
        return self

    def for_node(self, node_id: str, cluster: str = "") -> NodeAddresses:
        """Where this node's Envoy listens and serves admin."""
        chosen = next((n for n in self.nodes if n.id == node_id), None)
        if chosen is None and cluster:
            chosen = next((n for n in self.nodes if n.cluster == cluster), None)
        if chosen is None:
            return NodeAddresses(self.listen, self.admin)
        return NodeAddresses(chosen.listen or self.listen, chosen.admin or self.admin)
