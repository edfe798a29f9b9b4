"""The ext_proc service: Envoy asks "which replica?" once per request.

Per stream (= per HTTP request), in order:
  1. read the request headers (the only phase configured);
  2. resolve the pool: the one the route marked on the stream's gRPC metadata, else the
     model header (a request no route matched: answered 400 or 404 here);
  3. lease a slot, waiting in the pool's FIFO if none is free;
  4. reply with ``envoy.lb`` metadata pinning the replica and our lease id in the
     ``warmroute`` namespace. The access log returns that id when the request ends;
  5. end the stream with an OK status at once (Envoy needs nothing more from us), so no
     wake-up is spent on Envoy's half-close.
If the stream is reset while waiting (client gone), the wait is withdrawn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from warmroute.errors import MissingModel, NotServing, RequestRejected, UnknownModel
from warmroute.extproc import responses
from warmroute.extproc.waiting import acquire
from warmroute.metrics import Metrics
from warmroute.state import EndReason, Lease, Pool, Registry
from warmroute.xds.resources import POOL_METADATA_KEY

logger = logging.getLogger(__name__)

# The largest header value we read; a longer model name is certainly not a model name.
_MAX_MODEL_LEN = 256


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Adapter from ext_proc streams to the registry. Runs on the registry's event loop."""

    def __init__(self, registry: Registry, metrics: Metrics, model_header: str) -> None:
        self._registry = registry
        self._metrics = metrics
        self._model_header = model_header
        self.serving = True
        # Called with the pool name when a request has to wait: demand for the autoscaler.
        self.on_queued: Callable[[str], None] | None = None

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        # The reader/writer form (context.read/write; ``request_iterator`` is unused): no
        # async-generator layers between gRPC and this coroutine.
        routed_pool = _pool_marker(context)
        while (request := await context.read()) is not grpc.aio.EOF:
            if request.HasField("request_headers"):
                await context.write(await self._decide(request.request_headers, routed_pool))
                # Request headers are the only phase configured: return at once, so our
                # status goes out without waiting for Envoy's half-close. Were later phases
                # sent anyway, Envoy takes the closed stream as "no more processing".
                return
            # Only request headers are configured; answer anything else unchanged so a
            # misconfigured Envoy degrades to pass-through instead of hanging.
            await context.write(_passthrough(request))

    async def _decide(
        self, headers: ep.HttpHeaders, routed_pool: str | None
    ) -> ep.ProcessingResponse:
        started = time.perf_counter()
        request_id, model = _read_headers(headers, self._model_header)
        pool: Pool | None = None
        try:
            if not self.serving:
                raise NotServing("this warmroute instance is not leasing requests now")
            pool = self._resolve(routed_pool, model)
            lease = pool.try_acquire(request_id)
            if lease is None:
                if self.on_queued is not None:
                    self.on_queued(pool.name)
                wait_start = time.perf_counter()
                lease = await acquire(pool, request_id)
                waited = time.perf_counter() - wait_start
            else:
                waited = 0.0
        except RequestRejected as exc:
            pool_name = pool.name if pool is not None else "none"
            self._metrics.pool(pool_name).count(f"rejected_{exc.code}")
            logger.info("request %s rejected: %s (%s)", request_id, exc.code, exc.message)
            return responses.rejected(exc, request_id)
        except asyncio.CancelledError:
            logger.debug("request %s left while waiting in pool %s", request_id, pool)
            raise
        self._metrics.pool(pool.name).decided(waited, time.perf_counter() - started - waited)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s -> %s lease %s (waited %.1f ms)",
                request_id, lease.address, lease.id[:8], waited * 1e3,
            )  # fmt: skip
        return self._hand_over(lease)

    def _hand_over(self, lease: Lease) -> ep.ProcessingResponse:
        try:
            return responses.routed(lease)
        except BaseException:
            lease.release(EndReason.CANCELLED)
            raise

    def _resolve(self, routed_pool: str | None, model: str | None) -> Pool:
        registry = self._registry
        if routed_pool is not None:
            pool = registry.pools.get(routed_pool)
            if pool is not None:
                return pool
            # Envoy's routes name a pool we no longer have (config rollout in progress).
            raise UnknownModel(f"pool {routed_pool!r} is not configured")
        if not model:
            raise MissingModel(f"set the {self._model_header!r} header to a served model")
        pool = registry.pool_for_model(model)
        if pool is None:
            raise UnknownModel(f"model {model[:_MAX_MODEL_LEN]!r} is not served here")
        # A known model that no route matched means Envoy's routes are stale or the header
        # was not matchable (e.g. sent twice): refuse rather than guess.
        raise UnknownModel(f"model {model[:_MAX_MODEL_LEN]!r} is not routable right now")


def _pool_marker(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == POOL_METADATA_KEY:
            return str(value)
    return None


def _read_headers(headers: ep.HttpHeaders, model_header: str) -> tuple[str, str | None]:
    request_id = ""
    model: str | None = None
    for h in headers.headers.headers:
        key = h.key
        if key == "x-request-id":
            request_id = _value(h)
        elif key == model_header:
            model = _value(h)
    return request_id, model


def _value(h: object) -> str:
    raw: bytes = h.raw_value  # type: ignore[attr-defined]
    if raw:
        return raw.decode("utf-8", "replace")
    return str(h.value)  # type: ignore[attr-defined]


def _passthrough(request: ep.ProcessingRequest) -> ep.ProcessingResponse:
    resp = ep.ProcessingResponse()
    kind = request.WhichOneof("request")
    if kind:  # the response oneof mirrors the request's field names
        getattr(resp, kind).SetInParent()
    return resp
