"""Pools whose replicas are Kubernetes Pods: list+watch per pool, then warm probes.

A Pod that is Running but not Ready, or Ready but not yet passing the pool's warm probe,
is LOADING; Ready and warm is WARM; a deletionTimestamp makes it DRAINING (its in-flight
requests finish, it takes no new one); a deleted or finished Pod is gone. Pods are keyed
by name, so a relist after 410 or a reconnect never produces a duplicate replica, and an
IP change replaces the old address.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client as k8s

from warmroute.config import Config, PoolConfig
from warmroute.discovery.pods import pod_state
from warmroute.discovery.probe import Prober, Target
from warmroute.k8s.watch import PodWatcher, WatchStats
from warmroute.state import ReplicaEvent

logger = logging.getLogger(__name__)


class _PoolPods:
    """One pool's pods -> prober calls."""

    def __init__(self, pool: PoolConfig, prober: Prober) -> None:
        self.pool = pool
        self._prober = prober
        self._addresses: dict[str, str] = {}  # pod name -> address it is known by

    def sync(self, items: list[dict[str, Any]]) -> None:
        names = set()
        for pod in items:
            names.add(self._apply(pod))
        for name in [n for n in self._addresses if n not in names]:
            self._forget(name)

    def event(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "DELETED":
            self._forget(str(pod["metadata"]["name"]))
        else:
            self._apply(pod)

    def _apply(self, pod: dict[str, Any]) -> str:
        state = pod_state(pod, self.pool.kubernetes.port if self.pool.kubernetes else 8000)
        old = self._addresses.get(state.name)
        if state.gone or state.address is None:
            if old is not None:
                self._forget(state.name)
            return state.name
        if old is not None and old != state.address:
            self._prober.remove(self.pool.name, old)
        self._addresses[state.name] = state.address
        target = Target(self.pool.name, state.address, self.pool.slots, self.pool.probe)
        self._prober.set(target, state.readiness)
        return state.name

    def _forget(self, name: str) -> None:
        address = self._addresses.pop(name, None)
        if address is not None:
            self._prober.remove(self.pool.name, address)

    def pod_of(self, address: str) -> str | None:
        for name, addr in self._addresses.items():
            if addr == address:
                return name
        return None


class KubernetesDiscovery:
    """Owns a PodWatcher per Kubernetes pool; ``update`` follows config reloads."""

    def __init__(
        self,
        api: k8s.ApiClient,
        emit: Callable[[ReplicaEvent], None],
        on_status: Callable[[str, WatchStats], None] | None = None,
    ) -> None:
        self._api = api
        self.prober = Prober(emit)
        self._on_status = on_status
        self._pools: dict[str, tuple[PoolConfig, _PoolPods, PodWatcher]] = {}

    async def update(self, cfg: Config, kept: Sequence[PoolConfig] = ()) -> None:
        """Follow ``cfg``; ``kept`` are pools a reload dropped that Envoys not yet on the
        new version still route to: their pods stay watched (and leasable) until then."""
        loop = asyncio.get_running_loop()
        wanted = {p.name: p for p in [*cfg.pools, *kept] if p.kubernetes is not None}
        for name in list(self._pools):
            pool, pods, watcher = self._pools[name]
            if wanted.get(name) != pool:
                watcher.stop()
                pods.sync([])
                del self._pools[name]
        for name, pool in wanted.items():
            if name in self._pools:
                continue
            kube = pool.kubernetes
            assert kube is not None
            pods = _PoolPods(pool, self.prober)
            watcher = PodWatcher(
                self._api, kube.namespace, kube.selector, loop=loop,
                on_sync=pods.sync, on_event=pods.event,
                on_status=functools.partial(self._status, name),
            )  # fmt: skip
            watcher.start()
            self._pools[name] = (pool, pods, watcher)
            logger.info("watching pods %s %s for pool %s", kube.namespace, kube.selector, name)

    def pod_name(self, pool: str, address: str) -> str | None:
        entry = self._pools.get(pool)
        return entry[1].pod_of(address) if entry else None

    def stats(self) -> dict[str, WatchStats]:
        return {name: w.stats for name, (_, _, w) in self._pools.items()}

    def _status(self, pool: str, stats: WatchStats) -> None:
        if self._on_status is not None:
            self._on_status(pool, stats)

    async def close(self) -> None:
        watchers = [w for _, _, w in self._pools.values()]
        for w in watchers:
            w.stop()
        await asyncio.gather(*(asyncio.to_thread(w.join, 5.0) for w in watchers))
        self._pools.clear()
        await self.prober.close()
