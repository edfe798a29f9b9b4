"""The control plane process: registry + gRPC services + admin + discovery, on one loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from warmroute.admin import AdminServer
from warmroute.config import Config
from warmroute.discovery.static import StaticDiscovery
from warmroute.extproc.accesslog import AccessLogService
from warmroute.extproc.processor import ExternalProcessor
from warmroute.metrics import Metrics
from warmroute.state import Registry

logger = logging.getLogger(__name__)

_GRPC_OPTIONS = [
    # Each request in flight (or queued) holds one ext_proc stream on Envoy's connection.
    ("grpc.max_concurrent_streams", 1 << 20),
    # Fail loudly on a port clash instead of silently sharing it with another process.
    ("grpc.so_reuseport", 0),
]


class ControlPlane:
    """Owns every server task. ``start()`` binds; ``stop()`` releases everything."""

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = cfg
        self.registry = Registry(clock=clock)
        self.registry.configure(cfg.specs())
        self.metrics = Metrics(self.registry.view)
        self.processor = ExternalProcessor(self.registry, self.metrics, cfg.routing.model_header)
        self.access_log = AccessLogService(self.registry, self.metrics)
        self.discovery = StaticDiscovery(self.registry.apply)
        self.admin = AdminServer(self.metrics, self.registry.view, lambda: self.processor.serving)
        self._grpc: grpc.aio.Server | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.grpc_port = 0

    async def start(self) -> None:
        cfg = self.config
        server = grpc.aio.server(options=_GRPC_OPTIONS)
        ep_grpc.add_ExternalProcessorServicer_to_server(self.processor, server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self.access_log, server)
        self.grpc_port = server.add_insecure_port(cfg.control.grpc)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen for gRPC on {cfg.control.grpc}")
        await server.start()
        self._grpc = server
        host, _, port = cfg.control.admin.rpartition(":")
        await self.admin.start(host, int(port))
        await self.discovery.update(cfg)
        self._expiry = asyncio.create_task(self._expire_loop(), name="lease expiry")
        logger.info(
            "control plane up: gRPC %s, admin http://%s:%d",
            cfg.control.grpc, host, self.admin.port,
        )  # fmt: skip

    async def reload(self, cfg: Config) -> None:
        """Adopt a validated config: pools, models, replicas. Envoy's side is xDS's job."""
        self.registry.configure(cfg.specs())
        await self.discovery.update(cfg)
        self.config = cfg

    async def stop(self, grace: float = 1.0) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        await self.discovery.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        await self.admin.stop()

    async def _expire_loop(self) -> None:
        interval = self.config.control.expire_interval_seconds
        while True:
            await asyncio.sleep(interval)
            for lease in self.registry.expire():
                logger.warning(
                    "lease %s of request %s on %s expired: its end was never reported",
                    lease.id[:8], lease.request_id, lease.address,
                )  # fmt: skip
