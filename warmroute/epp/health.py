"""gRPC health (``grpc.health.v1.Health``) on the picker's port, as gateways probe it.

Gateways health-check a picker with gRPC health for the service
``envoy.service.ext_proc.v3.ExternalProcessor`` (the Gateway API Inference Extension's
Envoy config does); Kubernetes probes use ``liveness`` and ``readiness``; ``""`` is the
whole server. Statuses are computed when asked, from two callables, so they are never
stale:

* ``liveness``: SERVING while the process runs (NOT_SERVING once stopping);
* ``readiness``, ``""`` and the ext_proc service: SERVING when ``ready()`` (the pool is
  configured and this instance leases requests) and not stopping.

``Watch`` streams a status whenever it changes; call ``changed()`` after anything
``ready()`` depends on changes (a reload, leadership, stopping). Unknown services: Check
answers NOT_FOUND, Watch SERVICE_UNKNOWN (as the gRPC health protocol asks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
LIVENESS = "liveness"
READINESS = "readiness"
SERVICES = ("", LIVENESS, READINESS, EXT_PROC_SERVICE)

_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class PickerHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """The Health service. Use from the event loop thread that runs the gRPC server."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self._stopping = False
        self._changed = asyncio.Event()

    def status(self, service: str) -> int | None:
        """The status of ``service``, or None if it is not one we report."""
        if service not in SERVICES:
            return None
        if self._stopping:
            return _NOT_SERVING
        if service == LIVENESS:
            return _SERVING
        return _SERVING if self._ready() else _NOT_SERVING

    def changed(self) -> None:
        """Something ``ready()`` reads changed: wake every Watch to re-check."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def stopping(self) -> None:
        """Every service turns NOT_SERVING for good."""
        self._stopping = True
        self.changed()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        last: int | None = None
        while True:
            changed = self._changed  # taken before reading, so no change is missed
            status = self.status(request.service)
            current = _UNKNOWN if status is None else status
            if current != last:
                await context.write(health_pb2.HealthCheckResponse(status=current))
                last = current
            await changed.wait()
