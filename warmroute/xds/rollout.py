"""Staged config rollouts across a fleet of Envoys: canary, soak, promote, or roll back.

A new config version goes to the canary nodes first. When every canary has ACKed it
(listeners, routes and clusters) and ``soak_seconds`` pass without a NACK, it becomes the
default for every node. A NACK from any node halts it: canaries return to the last good
version, which every other node kept all along. Endpoint updates are not config and reach
every node whatever version it is on (see ``SnapshotCache``).

Pure bookkeeping driven by stream events and an injected clock. Node state (who is
connected, what each node ACKed) is read from the ADS server's ``NodeTable``, never kept
here. The end of a soak is a deadline: ``next_deadline()`` says when, ``on_deadline`` is
called whenever it changes (the ADS server arms one timer on it, see ``xds.timer``), and
``tick()`` acts on it; with ``soak_seconds: 0`` promotion happens within the ACK event.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from warmroute.config import RolloutConfig
from warmroute.xds.cache import EventKind, SnapshotCache, StreamEvent
from warmroute.xds.nodes import NodeTable
from warmroute.xds.snapshot import CLUSTER, LISTENER, ROUTE, Snapshot

logger = logging.getLogger(__name__)

CONFIG_TYPES = (CLUSTER, LISTENER, ROUTE)


class Stage(enum.Enum):
    STABLE = "stable"  # every node on the same version
    CANARY = "canary"  # candidate on canaries, waiting for their ACKs
    SOAKING = "soaking"  # canaries ACKed; waiting out the soak period
    HALTED = "halted"  # a node NACKed the candidate; rolled back


class Rollout:
    """One config rollout at a time over the nodes of ``nodes`` (the ADS server's table).

    ``on_change(rollout)`` is called when the stage changes; ``on_deadline()`` when
    ``next_deadline()`` does. Both run synchronously inside the call that caused them.
    Runs on one event loop; not thread-safe.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        policy: RolloutConfig,
        *,
        nodes: NodeTable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self.policy = policy
        self.nodes = nodes
        self._clock = clock
        self.stage = Stage.STABLE
        self.stable: Snapshot | None = None
        self.candidate: Snapshot | None = None
        self.canaries: frozenset[str] = frozenset()
        self._soak_until = 0.0
        self._told_deadline: float | None = None
        self.halt_reason = ""
        self.on_change: Callable[[Rollout], None] | None = None
        self.on_deadline: Callable[[], None] | None = None

    def next_deadline(self) -> float | None:
        """When (clock time) ``tick()`` has something to do: the end of the soak; None
        when nothing is timed."""
        return self._soak_until if self.stage is Stage.SOAKING else None

    def propose(self, snapshot: Snapshot) -> None:
        """Start rolling out ``snapshot`` (replacing any rollout in progress)."""
        self._start(snapshot)
        self._deadline_moved()

    def adopt(self, snapshot: Snapshot, why: str) -> None:
        """Make ``snapshot`` every node's version at once, unstaged: only for a change no
        Envoy can be hurt by (clusters no route names any more leaving)."""
        if self.candidate is not None:
            self._cache.assign(self.canaries, None)
        self._promote(snapshot, why=why)
        self._deadline_moved()

    def _start(self, snapshot: Snapshot) -> None:
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
        """Ids of the connected nodes, sorted."""
        return self.nodes.connected()

    def _pick_canaries(self) -> frozenset[str]:
        nodes = self.connected()
        named = [n for n in self.policy.canary_nodes if n in nodes]
        if named:
            return frozenset(named)
        count = max(1, math.ceil(self.policy.canary_share * len(nodes)))
        return frozenset(nodes[:count])

    def on_stream_event(self, event: StreamEvent) -> None:
        """React to an event the node table already holds: a NACK of the candidate halts
        the rollout; an ACK may end the canary stage (or, with no soak, promote); a
        disconnect may leave no canary (then start over)."""
        if event.kind is EventKind.PUSH:
            return
        if event.kind is EventKind.NACK:
            cand = self.candidate
            if (
                cand is not None
                and self._as_node(event.node_id, cand).version(event.type_url) == event.version
            ):
                self._halt(f"node {event.node_id} rejected {event.type_url}: {event.error}")
        self._check()
        self._deadline_moved()

    def tick(self) -> None:
        """Act on a deadline that passed (the end of the soak). Safe to call any time."""
        self._check()
        self._deadline_moved()

    def _deadline_moved(self) -> None:
        when = self.next_deadline()
        if when == self._told_deadline:
            return
        self._told_deadline = when
        if self.on_deadline is not None:
            self.on_deadline()

    def _check(self) -> None:
        cand = self.candidate
        if cand is None or self.stage not in (Stage.CANARY, Stage.SOAKING):
            return
        live = [n for n in self.canaries if self.nodes.is_connected(n)]
        if not live:
            # Every canary left: start over with whoever is connected now.
            self._start(cand)
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
        """Whether ``node`` ACKed every config type ``snap`` has resources of."""
        state = self.nodes.get(node)
        if state is None:
            return False
        snap = snap.for_node(node, state.cluster)  # its own listener, if it has one
        return all(
            state.has_acked(t, snap.version(t)) for t in CONFIG_TYPES if snap.of_type(t).items
        )

    def _as_node(self, node: str, snap: Snapshot) -> Snapshot:
        state = self.nodes.get(node)
        return snap.for_node(node, state.cluster if state is not None else "")

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
        """For the admin ``/xds`` endpoint and the per-node gauges: the rollout, and per
        node the table's view (``NodeTable.status``) plus ``config``, the label of the
        version it fully ACKed, and ``pending``, the candidate's label on a canary."""
        cand = self.candidate
        nodes = self.nodes.status(self._clock())
        for node, entry in nodes.items():
            entry["config"] = self._label_of(node)
            entry["pending"] = cand.label if cand and node in self.canaries else None
        return {
            "stage": self.stage.value,
            "stable": self.stable.label if self.stable else None,
            "candidate": cand.label if cand else None,
            "canaries": sorted(self.canaries),
            "halt_reason": self.halt_reason,
            "soak_seconds_left": (
                None
                if self.stage is not Stage.SOAKING
                else max(0.0, round(self._soak_until - self._clock(), 3))
            ),
            "nodes": nodes,
        }

    def _label_of(self, node: str) -> str | None:
        for snap in (self.candidate, self.stable):
            if snap is not None and self._has(node, snap):
                return snap.label
        return None
