"""One path for every config change on a running control plane.

A reload, a rollback after a NACK and a rollout settling all end in ``apply(cfg, kept)``,
which moves every component that follows the config to the same version, in one order:
the registry's pools, metrics, discovery (static, Kubernetes pods, InferencePools), the
autoscaler, the metrics scraper and the endpoint picker, then EDS. Nothing is applied
half: keys that only a restart can change are refused up front with a ``ConfigError``
naming them, and a component a new config needs but the process was started without
(the Kubernetes API and its watches) is built on the spot.

Envoys follow through the rollout (``xds.rollout``): a config whose listeners, routes and
clusters are unchanged (a replica moved or added: endpoints only) is not staged at all,
since endpoints reach every Envoy at once, whatever version it is on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from kubernetes import client as k8s

from warmroute.autoscale.controller import Autoscaler
from warmroute.config import Config, PoolConfig
from warmroute.discovery.inference_pool import InferencePoolDiscovery
from warmroute.discovery.kubernetes import KubernetesDiscovery
from warmroute.discovery.scrape import MetricsScraper
from warmroute.discovery.static import StaticDiscovery
from warmroute.errors import ConfigError
from warmroute.k8s.client import api_client
from warmroute.metrics import Metrics
from warmroute.state import Registry, ReplicaEvent
from warmroute.xds.builder import config_snapshot
from warmroute.xds.endpoints import EndpointPublisher
from warmroute.xds.rollout import CONFIG_TYPES, Rollout, Stage
from warmroute.xds.snapshot import Snapshot

logger = logging.getLogger(__name__)

KubeFactory = Callable[[Config], k8s.ApiClient]


def needs_kubernetes(cfg: Config) -> bool:
    """Does this config read the Kubernetes API (pods, InferencePools, a leader Lease)?"""
    return cfg.kubernetes.leader_election.enabled or any(
        p.kubernetes is not None or p.inference_pool is not None for p in cfg.pools
    )


def kube_api(cfg: Config) -> k8s.ApiClient:
    return api_client(cfg.kubernetes)


class KubernetesSources:
    """The Kubernetes API client and the discoveries that read it."""

    def __init__(self, api: k8s.ApiClient, emit: Callable[[ReplicaEvent], None]) -> None:
        self.api = api
        self.pods = KubernetesDiscovery(api, emit)
        self.pools = InferencePoolDiscovery(api, emit)  # pools from a Gateway API InferencePool

    async def update(self, cfg: Config, kept: Sequence[PoolConfig]) -> None:
        await self.pods.update(cfg, kept)
        await self.pools.update(cfg, kept)

    async def close(self) -> None:
        await self.pods.close()
        await self.pools.close()


def _restart_only(running: Config, new: Config, kube_built: bool) -> list[str]:
    """The keys ``new`` changes that a running process cannot adopt."""
    problems = []

    def check(key: str, old: object, now: object) -> None:
        if old != now:
            problems.append(
                f"{key}: changed from {old!r} to {now!r}, which takes a restart; "
                "the running process keeps the old value"
            )

    check("control.grpc", running.control.grpc, new.control.grpc)
    check("control.admin", running.control.admin, new.control.admin)
    check("control.tls", running.control.tls, new.control.tls)
    check("epp.enabled", running.epp.enabled, new.epp.enabled)
    check("epp.tls", running.epp.tls, new.epp.tls)
    check(
        "kubernetes.leader_election",
        running.kubernetes.leader_election,
        new.kubernetes.leader_election,
    )
    if kube_built:  # else the new settings are simply used when the client is built
        check("kubernetes.api_url", running.kubernetes.api_url, new.kubernetes.api_url)
        check("kubernetes.kubeconfig", running.kubernetes.kubeconfig, new.kubernetes.kubeconfig)
    return problems


class Configurable(Protocol):
    """A part that adopts each applied config itself (the request path's front end)."""

    def configure(self, cfg: Config) -> None: ...


class ConfigManager:
    """Owns the running config and every component's place in it.

    ``config`` is the newest config applied; ``kept`` are pools it dropped that Envoys not
    yet on its version may still route to (their replicas keep serving until the rollout
    settles). Runs on the event loop; applies are serialized.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        registry: Registry,
        metrics: Metrics,
        rollout: Rollout,
        publisher: EndpointPublisher,
        static: StaticDiscovery,
        autoscaler: Autoscaler,
        scraper: MetricsScraper,
        front_end: Configurable | None,
        kube_factory: KubeFactory = kube_api,
        source: str = "<config>",
    ) -> None:
        self.config = cfg
        self.kept: list[PoolConfig] = []
        self.source = source
        self._registry = registry
        self._metrics = metrics
        self._rollout = rollout
        self._publisher = publisher
        self._static = static
        self._autoscaler = autoscaler
        self._scraper = scraper
        self._front_end = front_end
        self._kube_factory = kube_factory
        self.kube = (
            KubernetesSources(kube_factory(cfg), publisher.emit) if needs_kubernetes(cfg) else None
        )
        # Snapshot label -> the config it came from, and the removed pools it still keeps.
        self._configs: dict[str, tuple[Config, tuple[PoolConfig, ...]]] = {}
        self._unrouted: set[str] = set()  # kept pools no Envoy routes new requests to
        self._generation = 0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        rollout.on_change = self._on_rollout_change
        registry.configure(cfg.specs())
        metrics.declare(p.name for p in cfg.pools)

    # -- the one path ----------------------------------------------------------------------

    async def apply(self, cfg: Config, kept: Sequence[PoolConfig] = ()) -> None:
        """Move every component to ``cfg`` (plus the ``kept`` pools); EDS follows."""
        async with self._lock:
            await self._apply(cfg, kept)

    async def _apply(self, cfg: Config, kept: Sequence[PoolConfig]) -> None:
        self.config = cfg
        self.kept = list(kept)
        grace = cfg.control.lease_grace_seconds
        # While Envoys on the old version still route to a kept pool, its requests find it
        # by model (a body-routed request) or by name (the route's pool). Once none does
        # (``_unrouted``), only by name: a new request for its model gets a clean 404.
        retiring = [
            dataclasses.replace(p.spec(grace), models=())
            if p.name in self._unrouted
            else p.spec(grace)
            for p in kept
        ]
        self._registry.configure([*cfg.specs(), *retiring])
        self._metrics.declare(p.name for p in cfg.pools)
        self._rollout.policy = cfg.xds.rollout
        if self.kube is None and needs_kubernetes(cfg):
            api = await asyncio.to_thread(self._kube_factory, cfg)
            self.kube = KubernetesSources(api, self._publisher.emit)
            logger.info("Kubernetes API client built: config %s needs it", self.source)
        await self._static.update(cfg, kept)
        if self.kube is not None:
            await self.kube.update(cfg, kept)
        self._autoscaler.configure(cfg)
        self._scraper.configure(cfg)
        if self._front_end is not None:
            self._front_end.configure(cfg)
        self._publisher.publish()

    async def start(self) -> None:
        """Apply the first config and hand its snapshot to the rollout."""
        async with self._lock:
            self._rollout.propose(self._snapshot(self.config, ()))
            await self._apply(self.config, ())

    async def reload(self, cfg: Config) -> str:
        """Adopt a validated config and roll it out to Envoys; returns its version label.

        Raises ConfigError (and changes nothing) if it changes a key only a restart can.
        """
        async with self._lock:
            problems = _restart_only(self.config, cfg, self.kube is not None)
            if problems:
                raise ConfigError(self.source, problems)
            # Envoys still on the old version may route to pools the new one drops, and
            # requests they routed there may still wait: keep those pools, replicas and
            # cluster, until the rollout settled and they drained (see _retire).
            names = {p.name for p in cfg.pools}
            kept = [p for p in [*self.config.pools, *self.kept] if p.name not in names]
            latest = self._rollout.candidate or self._rollout.stable
            snapshot = self._snapshot(cfg, kept)
            if latest is not None and _same_config(latest, snapshot):
                # Endpoints only: nothing for a rollout to stage. The running version now
                # stands for this config (a rollback or settle must not revert the move).
                self._generation -= 1
                del self._configs[snapshot.label]
                self._configs[latest.label] = (cfg, tuple(kept))
                await self._apply(cfg, kept)
                self._metrics.config_reloads.labels("applied").inc()
                logger.info("config from %s changes endpoints only: applied at once", self.source)
                return latest.label
            await self._apply(cfg, kept)
            self._rollout.propose(snapshot)
            self._metrics.config_reloads.labels("applied").inc()
            return snapshot.label

    # -- the rollout's side ----------------------------------------------------------------

    def _snapshot(self, cfg: Config, kept: Sequence[PoolConfig]) -> Snapshot:
        self._generation += 1
        digest = hashlib.blake2b(cfg.model_dump_json().encode(), digest_size=4).hexdigest()
        label = f"v{self._generation}-{digest}"
        self._configs[label] = (cfg, tuple(kept))
        return config_snapshot(cfg, label, kept)

    def tick(self) -> None:
        """Periodically (housekeeping): retire kept pools that drained since."""
        if (
            self.kept
            and self._rollout.stage is Stage.STABLE
            and not self._lock.locked()
            and any(self._drained(p.name) for p in self.kept)
        ):
            self._spawn(self._settle(), "retire drained pools")

    def _on_rollout_change(self, rollout: Rollout) -> None:
        if rollout.stage in (Stage.STABLE, Stage.HALTED) and rollout.stable is not None:
            self._spawn(self._settle(), "config settle")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self) -> None:
        """Every node is on one version (promoted, or rolled back after a NACK): every
        component follows that version's config; kept pools that drained are retired."""
        async with self._lock:
            rollout = self._rollout
            stable = rollout.stable
            if rollout.stage not in (Stage.STABLE, Stage.HALTED) or stable is None:
                return  # a newer rollout started meanwhile; it keeps what it needs
            entry = self._configs.get(stable.label)
            if entry is not None:
                cfg, kept = entry
                if cfg is not self.config:
                    logger.info("config %s: every component back on it", stable.label)
                await self._retire(cfg, kept)
            live = {s.label for s in (rollout.stable, rollout.candidate) if s is not None}
            self._configs = {k: v for k, v in self._configs.items() if k in live}

    async def _retire(self, cfg: Config, kept: Sequence[PoolConfig]) -> None:
        """No Envoy routes new requests to ``kept`` pools any more: the ones with nothing
        waiting or running go (replicas, then their cluster, in a new version); the rest
        stay until a later tick finds them drained."""
        busy = [p for p in kept if not self._drained(p.name)]
        self._unrouted = {p.name for p in busy}
        await self._apply(cfg, busy)
        if len(busy) < len(kept):
            gone = sorted({p.name for p in kept} - {p.name for p in busy})
            # No route names these clusters (every Envoy ACKed a version without them):
            # their leaving needs no canary.
            self._rollout.adopt(self._snapshot(cfg, busy), why=f"removed pools {gone} drained")

    def _drained(self, pool: str) -> bool:
        load = self._registry.load(pool)
        return load is None or (load.waiting == 0 and load.in_flight == 0)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.kube is not None:
            await self.kube.close()


def _same_config(a: Snapshot, b: Snapshot) -> bool:
    """Same listeners, routes and clusters: an Envoy would see no difference."""

    def per_node(s: Snapshot) -> list[tuple[str, str | None, str | None, str]]:
        return [(o.type_url, o.node_id, o.cluster, o.resources.version) for o in s.overrides]

    return all(a.version(t) == b.version(t) for t in CONFIG_TYPES) and per_node(a) == per_node(b)
