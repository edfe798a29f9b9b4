"""The admin HTTP endpoint: /metrics, /state, /healthz, /readyz and /xds (the rollout and
each Envoy's config versions). Binds loopback unless configured."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from warmroute.metrics import Metrics
from warmroute.state import RegistryView


class AdminServer:
    def __init__(
        self,
        metrics: Metrics,
        view: Callable[[], RegistryView],
        ready: Callable[[], bool],
        xds_status: Callable[[], dict[str, Any]] | None = None,
        inference_pools: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._view = view
        self._ready = ready
        self._xds_status = xds_status
        self.inference_pools = inference_pools  # may be set after construction
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/state", self._get_state)
        app.router.add_get("/healthz", self._get_health)
        app.router.add_get("/readyz", self._get_ready)
        app.router.add_get("/xds", self._get_xds)
        self._runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _get_state(self, request: web.Request) -> web.Response:
        """The registry; with InferencePool discovery, also ``inference_pools``: per pool the
        InferencePool's selector, target ports, picker and ``failure_mode``."""
        state = self._view().to_json()
        if self.inference_pools is not None:
            state["inference_pools"] = self.inference_pools()
        return web.json_response(state)

    async def _get_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _get_xds(self, request: web.Request) -> web.Response:
        """Rollout stage and, per Envoy node (from the ADS node table, see
        ``Rollout.status`` and ``NodeTable.status``): cluster, open streams, ACKed and
        in-flight versions per type, the config version it is on, the pending one, and the
        last NACK."""
        return web.json_response(self._xds_status() if self._xds_status else {})

    async def _get_ready(self, request: web.Request) -> web.Response:
        ok = self._ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)
