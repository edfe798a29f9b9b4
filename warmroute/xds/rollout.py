"""Staged config rollouts across a fleet of Envoys: canary, soak, promote, or roll back.

A new config version goes to the canary nodes first. When every canary has ACKed it
(listeners, routes and clusters) and ``soak_seconds`` pass without a NACK, it becomes the
default for every node. A NACK from any node halts it: canaries return to the last good
version, which every other node kept all along. Endpoint updates are not config and reach
every node whatever version it is on (see ``SnapshotCache``).

Pure bookkeeping driven by stream events and an injected clock; ``tick()`` is called
periodically by the server to end soak periods.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from warmroute.config import RolloutConfig
from warmroute.xds.cache import SnapshotCache, StreamEvent
from warmroute.xds.snapshot import CLUSTER, LISTENER, ROUTE, Snapshot

logger = logging.getLogger(__name__)

CONFIG_TYPES = (CLUSTER, LISTENER, ROUTE)


class Stage(enum.Enum):
    STABLE = "stable"  # every node on the same version
    CANARY = "canary"  # candidate on canaries, waiting for their ACKs
    SOAKING = "soaking"  # canaries ACKed; waiting out the soak period
    HALTED = "halted"  # a node NACKed the candidate; rolled back


@dataclass
class NodeStatus:
    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # type_url -> version
    last_nack: str = ""
    last_nack_type: str = ""


class Rollout:
    def __init__(
        self,
        cache: SnapshotCache,
        policy: RolloutConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self.policy = policy
        self._clock = clock
        self.stage = Stage.STABLE
        self.stable: Snapshot | None = None
        self.candidate: Snapshot | None = None
        self.canaries: frozenset[str] = frozenset()
        self.nodes: dict[str, NodeStatus] = {}
        self._soak_until = 0.0
        self.halt_reason = ""
        self.on_change: Callable[[Rollout], None] | None = None

    def propose(self, snapshot: Snapshot) -> None:
        """Start rolling out ``snapshot`` (replacing any rollout in progress)."""
        if self.stable is None or not self.connected():
            self._promote(snapshot, why="no Envoy connected" if self.stable else "first config")
            return
        if self.candidate is not None:
            self._cache.assign(self.canaries, None)
        self.candidate = snapshot
        self.canaries = self._pick_canaries()
        self.stage = Stage.CANARY
        self.halt_reason = ""
        self._cache.assign(self.canaries, snapshot)
        logger.info(
            "rollout of config %s started on canaries %s", snapshot.label, sorted(self.canaries)
        )
        self._check()

    def connected(self) -> list[str]:
        return sorted(n for n, s in self.nodes.items() if s.streams > 0)

    def _pick_canaries(self) -> frozenset[str]:
        nodes = self.connected()
        named = [n for n in self.policy.canary_nodes if n in nodes]
        if named:
            return frozenset(named)
        count = max(1, math.ceil(self.policy.canary_share * len(nodes)))
        return frozenset(nodes[:count])

    def on_stream_event(self, event: StreamEvent) -> None:
        status = self.nodes.setdefault(event.node_id, NodeStatus())
        if event.kind == "connect":
            status.streams += 1
        elif event.kind == "disconnect":
            status.streams = max(0, status.streams - 1)
        elif event.kind == "ack":
            status.acked[event.type_url] = event.version
        elif event.kind == "nack":
            status.last_nack = event.error
            status.last_nack_type = event.type_url
            cand = self.candidate
            if cand is not None and cand.version(event.type_url) == event.version:
                self._halt(f"node {event.node_id} rejected {event.type_url}: {event.error}")
        self._check()

    def tick(self) -> None:
        self._check()

    def _check(self) -> None:
        cand = self.candidate
        if cand is None or self.stage not in (Stage.CANARY, Stage.SOAKING):
            return
        live = [n for n in self.canaries if self.nodes.get(n, NodeStatus()).streams > 0]
        if not live:
            # Every canary left: start over with whoever is connected now.
            self.propose(cand)
            return
        if self.stage is Stage.CANARY and all(self._has(n, cand) for n in live):
            self.stage = Stage.SOAKING
            self._soak_until = self._clock() + self.policy.soak_seconds
            logger.info(
                "config %s acked by canaries; soaking %gs",
                cand.label, self.policy.soak_seconds,
            )  # fmt: skip
            self._changed()
        if self.stage is Stage.SOAKING and self._clock() >= self._soak_until:
            self._promote(cand, why="canaries acked and soaked")

    def _has(self, node: str, snap: Snapshot) -> bool:
        acked = self.nodes[node].acked
        return all(acked.get(t) == snap.version(t) for t in CONFIG_TYPES if snap.of_type(t).items)

    def _promote(self, snapshot: Snapshot, why: str) -> None:
        self._cache.set_default(snapshot)
        if self.canaries:
            self._cache.assign(self.canaries, None)
        self.stable = snapshot
        self.candidate = None
        self.canaries = frozenset()
        self.stage = Stage.STABLE
        logger.info("config %s is now the default for every Envoy (%s)", snapshot.label, why)
        self._changed()

    def _halt(self, reason: str) -> None:
        cand = self.candidate
        self._cache.assign(self.canaries, None)
        self.stage = Stage.HALTED
        self.halt_reason = reason
        logger.error(
            "rollout of config %s halted and rolled back to %s: %s",
            cand.label if cand else "?", self.stable.label if self.stable else "?", reason,
        )  # fmt: skip
        self.candidate = None
        self.canaries = frozenset()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def status(self) -> dict[str, Any]:
        """For the admin endpoint: the rollout and every node's versions."""
        cand = self.candidate
        return {
            "stage": self.stage.value,
            "stable": self.stable.label if self.stable else None,
            "candidate": cand.label if cand else None,
            "canaries": sorted(self.canaries),
            "halt_reason": self.halt_reason,
            "nodes": {
                node: {
                    "connected": s.streams > 0,
                    "acked": {t.rsplit(".", 1)[-1]: v for t, v in s.acked.items()},
                    "config": self._label_of(node),
                    "pending": cand.label if cand and node in self.canaries else None,
                    "last_nack": s.last_nack,
                    "last_nack_type": s.last_nack_type.rsplit(".", 1)[-1],
                }
                for node, s in sorted(self.nodes.items())
            },
        }

    def _label_of(self, node: str) -> str | None:
        for snap in (self.candidate, self.stable):
            if snap is not None and self._has(node, snap):
                return snap.label
        return None
