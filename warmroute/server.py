"""The control plane process: registry + director + gRPC services + admin + discovery.

One gRPC port serves everything the request path needs: the front end's services (own
Envoys: ADS, ext_proc and the access log; behind a gateway: the endpoint picker and gRPC
health; ``warmroute.front_end``) and load reports. Every request's decision is the one
``Director``'s, whichever front end asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.service.load_stats.v3 import lrs_pb2_grpc
from kubernetes import client as k8s

from warmroute import config as config_mod
from warmroute import config_watch
from warmroute.admin import AdminServer
from warmroute.autoscale.controller import Autoscaler, Scaler
from warmroute.config import Config, PoolConfig
from warmroute.config_manager import ConfigManager
from warmroute.config_watch import ConfigFileWatcher
from warmroute.director import Admission, Director, OutlierReporter
from warmroute.discovery.inference_pool import InferencePoolDiscovery
from warmroute.discovery.kubernetes import KubernetesDiscovery
from warmroute.discovery.scrape import MetricsScraper
from warmroute.discovery.static import StaticDiscovery
from warmroute.epp import PickerService
from warmroute.errors import ConfigError
from warmroute.extproc.load_reports import LoadReportService
from warmroute.fence import Fence
from warmroute.front_end import FrontEnd, OwnEnvoy
from warmroute.k8s.leader import LeaderElector
from warmroute.k8s.scale import KubernetesScaler
from warmroute.metrics import Metrics
from warmroute.sim.scaler import LocalScaler
from warmroute.state import Registry
from warmroute.xds.ads import AdsServer
from warmroute.xds.cache import SnapshotCache, StreamEvent, StreamObserver
from warmroute.xds.endpoints import EndpointPublisher
from warmroute.xds.nodes import NodeTable
from warmroute.xds.rollout import Rollout

logger = logging.getLogger(__name__)

_GRPC_OPTIONS = [
    # Each request in flight (or queued) holds one ext_proc stream on Envoy's connection.
    ("grpc.max_concurrent_streams", 1 << 20),
    # Fail loudly on a port clash instead of silently sharing it with another process.
    ("grpc.so_reuseport", 0),
]


# The longest any one step of stop() may take: a shutdown must end, whatever one part does.
_STOP_STEP_SECONDS = 15.0


async def _bounded(what: str, step: Awaitable[object]) -> None:
    """Await one shutdown step; past its time limit, log which one and go on."""
    try:
        await asyncio.wait_for(step, _STOP_STEP_SECONDS)
    except TimeoutError:
        logger.warning("stopping: %s did not finish within %gs; going on", what, _STOP_STEP_SECONDS)


class _Fanout:
    def __init__(self, *observers: StreamObserver) -> None:
        self._observers = observers

    def on_stream_event(self, event: StreamEvent) -> None:
        for o in self._observers:
            o.on_stream_event(event)


class _PoolScaler:
    """Scales each pool where its replicas come from: Kubernetes or local processes."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self._kube: KubernetesScaler | None = None

    def _for(self, pool: PoolConfig) -> Scaler:
        if pool.kubernetes is None:
            return self._plane.local_scaler
        if self._kube is None:
            kube = self._plane.manager.kube
            if kube is None:  # a pool's config says kubernetes, so apply() built it
                raise RuntimeError(f"pool {pool.name}: no Kubernetes API client")
            self._kube = KubernetesScaler(kube.api, kube.pods.pod_name)
        return self._kube

    async def get_replicas(self, pool: PoolConfig) -> int:
        return await self._for(pool).get_replicas(pool)

    async def set_replicas(self, pool: PoolConfig, replicas: int) -> None:
        await self._for(pool).set_replicas(pool, replicas)

    async def mark_deletion_costs(self, pool: PoolConfig, costs: dict[str, int]) -> None:
        await self._for(pool).mark_deletion_costs(pool, costs)


class ControlPlane:
    """Owns every server task. ``start()`` binds; ``stop()`` releases everything.

    ``config_path``, if given, is re-read on ``reload_from_file()`` (SIGHUP, file change).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config_path = Path(config_path) if config_path else None
        self.registry = Registry(clock=clock)
        self.cache = SnapshotCache()
        self.nodes = NodeTable()  # per Envoy node, written by self.ads, read by the others
        self.rollout = Rollout(self.cache, cfg.xds.rollout, nodes=self.nodes, clock=clock)
        self.metrics = Metrics(self.registry.view, self.rollout.status)
        # Request outcomes -> ejections (both front ends, through the director; it times
        # the returns).
        self.outliers = OutlierReporter(self.registry, self.metrics)
        self.publisher = EndpointPublisher(
            self.registry,
            self.cache,
            on_routable=lambda pool, addr, s: self.metrics.endpoint_ready.observe(s),
            nodes=self.nodes,
            clock=clock,
        )
        self.ads = AdsServer(
            self.cache,
            _Fanout(self.publisher, self.rollout, self.metrics),
            nodes=self.nodes,
            timed=self.rollout,  # soaks end on a timer, not on the housekeeping tick
            clock=clock,
        )
        self.discovery = StaticDiscovery(self.publisher.emit)
        self.local_scaler = LocalScaler(self.discovery.prober)
        self.autoscaler = Autoscaler(
            self.registry,
            _PoolScaler(self),
            cfg,
            on_scale=lambda pool, old, new, why: self.metrics.scale_events.labels(
                pool, "up" if new > old else "down"
            ).inc(),
            clock=clock,
        )
        leader_election = cfg.kubernetes.leader_election
        # Every request's decision, whichever front end asked (``warmroute.director``).
        self.director = Director(
            self.registry,
            self.metrics,
            outliers=self.outliers,
            # Pools with queue.reject_when_unmeetable answer 503 at once; the rules follow
            # the config the manager applied last.
            admission=Admission(pools=lambda: self.manager.config.pools),
            on_queued=self.autoscaler.poke,  # demand for the autoscaler
            serving=not leader_election.enabled,  # a standby until elected
        )
        # How requests reach us, chosen at start: a gateway's picker or our own Envoys.
        self.front_end: FrontEnd = (
            PickerService(self.director, self.registry, self.metrics, cfg)
            if cfg.epp.enabled
            else OwnEnvoy(
                self.director, self.registry, self.metrics, cfg, ads=self.ads, nodes=self.nodes
            )
        )
        self.scraper = MetricsScraper(self.registry, self.publisher.emit)
        # Every config change (reload, rollback, settle) goes through the manager.
        self.manager = ConfigManager(
            cfg,
            registry=self.registry,
            metrics=self.metrics,
            rollout=self.rollout,
            publisher=self.publisher,
            static=self.discovery,
            autoscaler=self.autoscaler,
            scraper=self.scraper,
            front_end=self.front_end,
            source=str(self.config_path or "<config>"),
        )
        self.elector: LeaderElector | None = None
        if leader_election.enabled:
            kube = self.manager.kube
            assert kube is not None  # leader election needs the API: built with the manager
            self.elector = LeaderElector(
                kube.api, leader_election, self._on_leadership, clock=clock
            )
        # A starting process, and a new leader, count every slot as taken until they know
        # the replica's real load: Envoys' load reports, its metrics, or its requests' ends.
        self.fence = Fence(self.registry)
        self.load_reports = LoadReportService(
            self.registry,
            self.metrics,
            on_truth=self.fence.truth,
            ads_nodes=self.front_end.ads_nodes,
            interval=cfg.control.load_report_interval_seconds,
            clock=clock,
        )
        self.admin = AdminServer(
            self.metrics,
            self.registry.view,
            lambda: self.director.serving,
            xds_status=self.rollout.status,
            inference_pools=self._inference_pools,
        )
        self._grpc: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: ConfigFileWatcher | None = None
        self._stopped = False
        self.grpc_port = 0

    @property
    def config(self) -> Config:
        """The config every component follows now (the newest applied)."""
        return self.manager.config

    @property
    def kube_api(self) -> k8s.ApiClient | None:
        return self.manager.kube.api if self.manager.kube else None

    @property
    def kube_discovery(self) -> KubernetesDiscovery | None:
        return self.manager.kube.pods if self.manager.kube else None

    @property
    def pool_discovery(self) -> InferencePoolDiscovery | None:
        return self.manager.kube.pools if self.manager.kube else None

    def kept_pool_names(self) -> list[str]:
        """Pools a reload removed that still serve requests Envoy routed to them."""
        return [p.name for p in self.manager.kept]

    def _inference_pools(self) -> dict[str, dict[str, Any]]:
        kube = self.manager.kube
        return kube.pools.status() if kube is not None else {}

    async def start(self) -> None:
        cfg = self.config
        server = grpc.aio.server(options=_GRPC_OPTIONS)
        source = str(self.config_path or "<config>")
        self.grpc_port = self.front_end.bind(server, cfg, source)
        lrs_pb2_grpc.add_LoadReportingServiceServicer_to_server(self.load_reports, server)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen for gRPC on {cfg.control.grpc}")
        if cfg.control.start_fence:
            # Requests routed before this start may still run anywhere (module fence).
            grace = cfg.control.start_fence_grace_seconds
            self.fence.begin("start", self.front_end.start_grace if grace is None else grace)
        await self.manager.start()
        await server.start()
        self._grpc = server
        host, _, port = cfg.control.admin.rpartition(":")
        await self.admin.start(host, int(port))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        # Always running (idle without work), so a reload can turn either on.
        self._tasks.append(asyncio.create_task(self.autoscaler.run(), name="autoscaler"))
        self._tasks.append(asyncio.create_task(self.scraper.run(), name="metrics scrape"))
        if self.elector is not None:
            self._tasks.append(asyncio.create_task(self.elector.run(), name="leader election"))
        if self.config_path is not None:
            checks = self.metrics.config_file_checks
            self._watcher = ConfigFileWatcher(
                self.config_path,
                self._reload_changed_file,
                on_check=lambda cause: checks.labels(cause).inc(),
            )
            self._tasks.append(asyncio.create_task(self._watcher.run(), name="config watch"))
        logger.info(
            "control plane up: gRPC (%s, load reports) %s, admin http://%s:%d",
            self.front_end.describe(), cfg.control.grpc, host, self.admin.port,
        )  # fmt: skip

    async def reload(self, cfg: Config) -> str:
        """Adopt a validated config; roll it out to Envoys. Returns its version label.

        Raises ConfigError, changing nothing, if it changes what only a restart can."""
        return await self.manager.reload(cfg)

    async def reload_from_file(self) -> bool:
        """Re-read ``config_path``. An invalid file changes nothing; the error is logged."""
        if self.config_path is None:
            return False
        path = self.config_path
        # What we read now is what the watcher must not read again.
        content = await asyncio.to_thread(config_watch.digest, path)
        if self._watcher is not None:
            self._watcher.seen(content)
        try:
            cfg = await asyncio.to_thread(config_mod.load, path)
            cfg = self.front_end.as_running(cfg, str(path))  # the mode was chosen at start
            label = await self.manager.reload(cfg)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            # One line per bad key, so line-based log shippers keep each one whole.
            for problem in exc.problems:
                logger.error(
                    "config reload rejected, keeping the running config: %s: %s",
                    exc.path, problem,
                )  # fmt: skip
            return False
        logger.info("config %s loaded from %s", label, path)
        return True

    async def _reload_changed_file(self) -> None:
        await self.reload_from_file()

    async def stop(self, grace: float = 1.0) -> None:
        """Stop everything; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.front_end.stopping()  # a gateway's health checks see it first
        self.fence.cancel()
        self.outliers.close()
        for t in self._tasks:
            t.cancel()
        if self._watcher is not None:
            self._watcher.stop()
        await _bounded("background tasks", asyncio.gather(*self._tasks, return_exceptions=True))
        self._tasks.clear()
        await _bounded("config manager and Kubernetes watches", self.manager.close())
        await _bounded("static discovery", self.discovery.close())
        await _bounded("local replicas", self.local_scaler.close())
        # End ADS streams first: Envoy then reconnects with backoff instead of hanging on a
        # stream the server no longer serves.
        await _bounded("ADS streams", self.ads.close())
        if self._grpc is not None:
            await _bounded("gRPC server", self._grpc.stop(grace))
        await _bounded("admin server", self.admin.stop())

    def _on_leadership(self, leader: bool) -> None:
        self.front_end.set_serving(leader)
        if not leader:
            self.fence.cancel()
            return
        # The previous leader's requests may still run on any replica: count every slot
        # as taken until Envoys' reports or a metrics scrape show the truth, or the grace
        # period ends.
        self.fence.begin("takeover", self.config.kubernetes.leader_election.takeover_grace_seconds)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.control.expire_interval_seconds)
            for lease in self.registry.expire():
                logger.warning(
                    "lease %s of request %s on %s expired: its end was never reported",
                    lease.id[:8], lease.request_id, lease.address,
                )  # fmt: skip
            # Replicas whose last request ended leave EDS. Soaks end on the ADS server's
            # timer; this tick is only a backstop.
            self.publisher.publish()
            self.rollout.tick()
            # Pools a reload removed leave once their last request ended.
            self.manager.tick()
            # Ejections end on the outlier timer; this tick is a backstop (and returns
            # replicas a reload or a shrinking pool lets back early).
            self.outliers.restore()
