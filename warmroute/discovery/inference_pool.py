"""Pools whose replicas come from a Gateway API Inference Extension ``InferencePool``.

For each pool with ``inference_pool: {namespace, name}``, warmroute list+watches that one
InferencePool (``fieldSelector=metadata.name=...``) and, while it exists, the Pods its
``spec.selector.matchLabels`` picks in its namespace. Every Pod IP x every
``spec.targetPorts`` number is one replica ``ip:port``, with the same phases as a
``kubernetes`` pool: Running but not Ready, or Ready and not yet passing the warm probe,
is LOADING; Ready and warm is WARM; a deletionTimestamp is DRAINING; deleted is gone.

* selector changed: the Pods are watched again with the new selector; the old replicas stay
  until the new LIST says which remain (make-before-break);
* targetPorts changed: each known Pod's replicas follow the new ports;
* InferencePool deleted (or gone after a relist): the Pod watch stops and every replica is
  removed (in-flight requests finish); creating it again starts over;
* 410 Gone relists, API errors back off and keep the last known state (see
  :mod:`warmroute.k8s.watch`).

Only typed events (through :class:`~warmroute.discovery.probe.Prober`) leave this module.
Call everything from the event loop.
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
from warmroute.discovery.probe import Prober, Readiness, Target
from warmroute.k8s.inference_pool import (
    FAIL_OPEN,
    GROUP,
    PLURAL,
    VERSION,
    InferencePoolSpec,
    inference_pool_spec,
)
from warmroute.k8s.watch import ListWatcher, Obj, PodWatcher, WatchStats
from warmroute.state import ReplicaEvent

logger = logging.getLogger(__name__)

FAIL_OPEN_WARNING = "with FailOpen the gateway bypasses slots when the picker is unavailable"


class _Members:
    """One pool's Pods x target ports -> prober calls. Keeps the last state of each Pod so a
    change of ports can be applied without a relist."""

    def __init__(self, pool: PoolConfig, prober: Prober) -> None:
        self._pool = pool
        self._prober = prober
        self._ports: tuple[int, ...] = ()
        self._pods: dict[str, Obj] = {}  # pod name -> last state seen
        self._addresses: dict[str, frozenset[str]] = {}  # pod name -> replicas it gives

    def set_ports(self, ports: tuple[int, ...]) -> None:
        self._ports = ports
        for name in list(self._pods):
            self._apply(name)

    def sync(self, items: list[Obj]) -> None:
        listed = {str(pod["metadata"]["name"]): pod for pod in items}
        for name in [n for n in self._pods if n not in listed]:
            self._forget(name)
        for name, pod in listed.items():
            self._pods[name] = pod
            self._apply(name)

    def event(self, kind: str, pod: Obj) -> None:
        name = str(pod["metadata"]["name"])
        if kind == "DELETED":
            self._forget(name)
        else:
            self._pods[name] = pod
            self._apply(name)

    def clear(self) -> None:
        for name in list(self._pods):
            self._forget(name)

    def addresses(self) -> dict[str, frozenset[str]]:
        return dict(self._addresses)

    def _apply(self, name: str) -> None:
        pod = self._pods[name]
        wanted: dict[str, Readiness] = {}
        for port in self._ports:
            state = pod_state(pod, port)
            if not state.gone and state.address is not None:
                wanted[state.address] = state.readiness
        for address in self._addresses.get(name, frozenset()) - wanted.keys():
            self._prober.remove(self._pool.name, address)
        self._addresses[name] = frozenset(wanted)
        for address, readiness in wanted.items():
            target = Target(self._pool.name, address, self._pool.slots, self._pool.probe)
            self._prober.set(target, readiness)

    def _forget(self, name: str) -> None:
        self._pods.pop(name, None)
        for address in self._addresses.pop(name, frozenset()):
            self._prober.remove(self._pool.name, address)


class _PoolWatch:
    """Watches one InferencePool, and the Pods its current selector picks."""

    def __init__(
        self,
        api: k8s.ApiClient,
        pool: PoolConfig,
        prober: Prober,
        loop: asyncio.AbstractEventLoop,
        on_status: Callable[[], None],
    ) -> None:
        ref = pool.inference_pool
        assert ref is not None
        self.pool = pool
        self.namespace, self.name = ref.namespace, ref.name
        self.spec: InferencePoolSpec | None = None
        self.error = ""  # why the InferencePool is not usable, if it is not
        self._api = api
        self._loop = loop
        self._on_status = on_status
        self._members = _Members(pool, prober)
        self.pool_watcher = ListWatcher(
            k8s.CustomObjectsApi(api).list_namespaced_custom_object,
            (GROUP, VERSION, self.namespace, PLURAL),
            what=f"inferencepool {self.namespace}/{self.name}",
            field_selector=f"metadata.name={self.name}",
            loop=loop, on_sync=self._pool_sync, on_event=self._pool_event,
            on_status=lambda _: on_status(),
        )  # fmt: skip
        self.pod_watcher: PodWatcher | None = None
        self._stopped: list[ListWatcher] = []  # stopped, not yet joined
        self._closed = False

    def start(self) -> None:
        self.pool_watcher.start()

    def stop(self) -> list[ListWatcher]:
        """Stop watching and remove every replica; returns the watchers to join. Results
        the watchers queued before stopping are ignored."""
        self._closed = True
        self.pool_watcher.stop()
        self._stop_pods()
        self._members.clear()
        stopped, self._stopped = [self.pool_watcher, *self._stopped], []
        return stopped

    def addresses(self) -> dict[str, frozenset[str]]:
        return self._members.addresses()

    def take_stopped(self) -> list[ListWatcher]:
        """Pod watchers replaced after a selector change, to be joined by the caller."""
        stopped, self._stopped = self._stopped, []
        return stopped

    def _pool_sync(self, items: list[Obj]) -> None:
        mine = [i for i in items if (i.get("metadata") or {}).get("name") == self.name]
        self._set(mine[0] if mine else None)

    def _pool_event(self, kind: str, obj: Obj) -> None:
        if (obj.get("metadata") or {}).get("name") == self.name:
            self._set(None if kind == "DELETED" else obj)

    def _set(self, obj: Obj | None) -> None:
        if self._closed:
            return
        spec: InferencePoolSpec | None = None
        self.error = ""
        if obj is not None:
            try:
                spec = inference_pool_spec(obj)
            except ValueError as exc:
                self.error = str(exc)
                logger.error(
                    "pool %s: InferencePool %s/%s is not usable (%s); no replicas",
                    self.pool.name, self.namespace, self.name, exc,
                )  # fmt: skip
        old, self.spec = self.spec, spec
        if spec is None:
            if old is not None:
                logger.warning(
                    "pool %s: InferencePool %s/%s is gone; its replicas are removed",
                    self.pool.name, self.namespace, self.name,
                )  # fmt: skip
            self._stop_pods()
            self._members.clear()
        else:
            self._follow(old, spec)
        self._on_status()

    def _follow(self, old: InferencePoolSpec | None, spec: InferencePoolSpec) -> None:
        if spec.failure_mode == FAIL_OPEN and (old is None or old.failure_mode != FAIL_OPEN):
            logger.warning(
                "pool %s: InferencePool %s/%s has failureMode FailOpen: %s",
                self.pool.name, self.namespace, self.name, FAIL_OPEN_WARNING,
            )  # fmt: skip
        if spec.app_protocol != "http" and (old is None or old.app_protocol != spec.app_protocol):
            logger.warning(
                "pool %s: InferencePool %s/%s has appProtocol %s; warm probes and metrics "
                "scrapes speak HTTP/1.1", self.pool.name, self.namespace, self.name,
                spec.app_protocol,
            )  # fmt: skip
        if old is None or old.target_ports != spec.target_ports:
            self._members.set_ports(spec.target_ports)
        if old is None or old.selector != spec.selector or self.pod_watcher is None:
            self._stop_pods()
            self._watch_pods(spec)
            logger.info(
                "pool %s: InferencePool %s/%s selects pods %s on ports %s",
                self.pool.name, self.namespace, self.name, spec.match_labels,
                list(spec.target_ports),
            )  # fmt: skip

    def _watch_pods(self, spec: InferencePoolSpec) -> None:
        watcher: PodWatcher

        def sync(items: list[Obj]) -> None:
            if self.pod_watcher is watcher:  # ignore a replaced watcher's late results
                self._members.sync(items)

        def event(kind: str, obj: Obj) -> None:
            if self.pod_watcher is watcher:
                self._members.event(kind, obj)

        watcher = PodWatcher(
            self._api, self.namespace, spec.match_labels, loop=self._loop,
            on_sync=sync, on_event=event, on_status=lambda _: self._on_status(),
        )  # fmt: skip
        self.pod_watcher = watcher
        watcher.start()

    def _stop_pods(self) -> None:
        if self.pod_watcher is not None:
            self.pod_watcher.stop()
            self._stopped.append(self.pod_watcher)
            self.pod_watcher = None

    def status(self) -> dict[str, Any]:
        """The InferencePool as warmroute sees it, for ``/state``."""
        spec, picker = self.spec, self.spec.picker if self.spec else None
        pods = self.pod_watcher.stats if self.pod_watcher else None
        return {
            "namespace": self.namespace,
            "name": self.name,
            "present": spec is not None,
            "error": self.error or None,
            "selector": spec.match_labels if spec else None,
            "target_ports": list(spec.target_ports) if spec else None,
            "app_protocol": spec.app_protocol if spec else None,
            "failure_mode": spec.failure_mode if spec else None,
            "endpoint_picker": (
                {"kind": picker.kind, "name": picker.name, "port": picker.port} if picker else None
            ),
            "watch": {
                "connected": self.pool_watcher.stats.connected,
                "pods_connected": pods.connected if pods else None,
                "errors": self.pool_watcher.stats.errors + (pods.errors if pods else 0),
            },
        }


class InferencePoolDiscovery:
    """Owns a :class:`_PoolWatch` per ``inference_pool`` pool; ``update`` follows config
    reloads. ``emit`` receives typed replica events, on the event loop."""

    def __init__(
        self,
        api: k8s.ApiClient,
        emit: Callable[[ReplicaEvent], None],
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self._api = api
        self.prober = Prober(emit)
        self._on_status = on_status
        self._pools: dict[str, _PoolWatch] = {}
        self._stopped: list[ListWatcher] = []

    async def update(self, cfg: Config, kept: Sequence[PoolConfig] = ()) -> None:
        """Follow ``cfg``; ``kept`` pools (dropped by a reload that is still rolling out)
        stay watched until every Envoy has left the version that routes to them."""
        loop = asyncio.get_running_loop()
        wanted = {p.name: p for p in [*cfg.pools, *kept] if p.inference_pool is not None}
        for name in list(self._pools):
            if wanted.get(name) != self._pools[name].pool:
                self._stopped += self._pools.pop(name).stop()
        for name, pool in wanted.items():
            if name not in self._pools:
                on_status = functools.partial(self._status, name)
                watch = _PoolWatch(self._api, pool, self.prober, loop, on_status)
                self._pools[name] = watch
                watch.start()
                logger.info(
                    "pool %s: watching InferencePool %s/%s", name, watch.namespace, watch.name
                )
        await self._join()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per pool: the InferencePool's selector, ports, picker and failure mode."""
        return {name: w.status() for name, w in self._pools.items()}

    def addresses(self, pool: str) -> dict[str, frozenset[str]]:
        """Pod name -> the replica addresses it gives (``ip:port`` per target port)."""
        watch = self._pools.get(pool)
        return watch.addresses() if watch else {}

    def stats(self) -> dict[str, WatchStats]:
        """Per pool, the InferencePool watch's statistics."""
        return {name: w.pool_watcher.stats for name, w in self._pools.items()}

    def pod_stats(self) -> dict[str, WatchStats | None]:
        """Per pool, the current Pod watch's statistics (None while there is none)."""
        return {
            name: w.pod_watcher.stats if w.pod_watcher else None for name, w in self._pools.items()
        }

    def _status(self, pool: str) -> None:
        if self._on_status is not None:
            self._on_status(pool)

    async def _join(self) -> None:
        stopped, self._stopped = self._stopped, []
        for w in self._pools.values():
            stopped += w.take_stopped()
        await asyncio.gather(*(asyncio.to_thread(w.join, 5.0) for w in stopped))

    async def close(self) -> None:
        for name in list(self._pools):
            self._stopped += self._pools.pop(name).stop()
        await self._join()
        await self.prober.close()
