"""The endpoint picker's ext_proc stream: one stream per HTTP request, start to end.

A gateway that owns Envoy calls us with request and response headers ``SEND``, bodies
``FULL_DUPLEX_STREAMED`` and trailers ``SEND`` (the Gateway API Inference Extension's
picker configuration). Per stream, in order:

  1. request headers: note the request id, the model header and the subset hint. With
     ``end_of_stream`` (a GET, no body) decide at once (step 3) and answer;
  2. request body chunks: buffer them, at most ``routing.max_body_bytes`` (else 413);
  3. at the body's end (its ``end_of_stream``, or the request trailers): read the model
     (``request.model.parse_body`` + ``choose_model``; it must be one of the pool's
     models), have the director lease a slot inside the subset hint (waiting in the
     pool's queue if none is free), then answer the headers (``messages.routed``) and
     echo the whole body back, byte-identical, as streamed chunks (and the trailers, if
     they ended it);
  4. response headers, each response body chunk (echoed at once, ``end_of_stream`` kept)
     and response trailers are answered as they come, so streams pass whole and promptly.
     An endpoint the gateway reports having used that is not the leased one is counted in
     ``warmroute_upstream_mismatch_total``;
  5. the response's end (body ``end_of_stream``, trailers, or headers with
     ``end_of_stream``) releases the lease and ends our side of the stream. Just before,
     how the request went counts for the replica's outlier detection
     (``director.outliers``): a 5xx or Envoy's own 5xx reply for it
     (``messages.from_upstream`` false: refused, reset, timed out) is a failure; a 503 or
     429 the replica sent itself says it is full; a stream that ends before the response
     does (the client left) counts for nothing.

The decision (step 3) and the end (step 5) are the director's (``Director.lease``,
``Director.finish``): this module only runs the stream. The lease is released in a
``finally`` that always runs: response end, stream end, reset (client gone: gRPC cancels
the handler) or any error. No access log is needed in this mode; the lease deadline and
metrics reconciliation stay as the safety net. Requests are refused with an
ImmediateResponse (``warmroute.request.responses.rejected``), counted once by
``Director.refused``, and the stream then ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from warmroute.director import Director, Request
from warmroute.epp import messages
from warmroute.errors import BodyTooLarge, NotServing, RequestRejected, UnknownModel
from warmroute.metrics import Metrics
from warmroute.request import responses
from warmroute.request.model import MAX_MODEL_LEN, choose_model, parse_body
from warmroute.request.source import PickedRequest
from warmroute.state import Lease, Registry
from warmroute.state.outlier import Outcome, classify

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PickerSettings:
    """What the picker needs from the config; replaced whole on reload."""

    pool: str  # the one pool (InferencePool) this picker serves
    model_header: str = "x-model"
    max_body_bytes: int = 8 * 1024 * 1024


class _Exchange:
    """One request's state on its stream. Owned by the stream's task."""

    __slots__ = (
        "answered", "body", "granted_at", "headers", "hint", "lease", "model", "outcome",
        "request_id", "status",
    )  # fmt: skip

    def __init__(self) -> None:
        self.request_id = ""
        self.model: str | None = None  # from the model header
        # Kept for the director, which reads from them only what the pool needs.
        self.headers: ep.HttpHeaders | None = None
        self.hint: tuple[str, ...] | None = None
        self.body = bytearray()
        self.lease: Lease | None = None
        self.granted_at = 0.0
        self.status = 0  # the response's :status, once seen
        self.answered = False  # the replica sent those response headers, not Envoy
        self.outcome: str | None = None  # set when the response ended


class EndpointPicker(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """ext_proc servicer speaking the endpoint picker protocol for one pool.

    Runs on the registry's event loop. Every decision is ``director``'s (which answers 503
    while it is not serving: standby, stopping); ``metrics`` counts upstream mismatches.
    """

    def __init__(
        self, director: Director, registry: Registry, metrics: Metrics, settings: PickerSettings
    ) -> None:
        self._director = director
        self._registry = registry
        self._metrics = metrics
        self.settings = settings

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        ex = _Exchange()
        try:
            await self._serve(ex, context)
        except asyncio.CancelledError:
            if ex.outcome is None:
                ex.outcome = "client_disconnect"
            raise
        finally:
            self._finish(ex)

    async def _serve(self, ex: _Exchange, context: grpc.aio.ServicerContext) -> None:
        limit = self.settings.max_body_bytes
        while (msg := await context.read()) is not grpc.aio.EOF:
            kind = msg.WhichOneof("request")
            if ex.lease is None and ex.hint is None:
                ex.hint = messages.subset_hint(msg)
            if kind == "response_body":
                body = msg.response_body
                if body.end_of_stream:
                    self._response_ended(ex)
                for resp in messages.body_chunks("response_body", body.body, body.end_of_stream):
                    await context.write(resp)
                if body.end_of_stream:
                    return
            elif kind == "request_body":
                body = msg.request_body
                if ex.lease is not None:  # after routing (never sent so): pass it through
                    for resp in messages.body_chunks("request_body", body.body, body.end_of_stream):
                        await context.write(resp)
                    continue
                if len(ex.body) + len(body.body) > limit:
                    exc = BodyTooLarge(f"the request body is over {limit} bytes")
                    await context.write(self._reject(ex, exc))
                    return
                ex.body += body.body
                if body.end_of_stream and not await self._route(ex, context, has_body=True):
                    return
            elif kind == "request_headers":
                headers = msg.request_headers
                if ex.lease is not None or ex.request_id:
                    # Headers twice on one stream (never sent so): one request, one lease.
                    await context.write(messages.REQUEST_HEADERS_OK)
                    continue
                self._read_request_headers(ex, headers)
                if headers.end_of_stream and not await self._route(ex, context, has_body=False):
                    return
            elif kind == "response_headers":
                headers = msg.response_headers
                ex.status = messages.status_code(headers)
                ex.answered = messages.from_upstream(headers)
                self._check_served(ex, messages.served_endpoint(msg))
                if headers.end_of_stream:
                    self._response_ended(ex)
                await context.write(messages.RESPONSE_HEADERS_OK)
                if headers.end_of_stream:
                    return
            elif kind == "request_trailers":
                # Trailers end a body that had no end_of_stream: route now. Had we routed
                # already, they only need an answer.
                if ex.lease is not None:
                    await context.write(messages.REQUEST_TRAILERS_OK)
                elif not await self._route(ex, context, has_body=True, trailers=True):
                    return
            elif kind == "response_trailers":
                self._response_ended(ex)
                await context.write(messages.RESPONSE_TRAILERS_OK)
                return

    # -- the decision ---------------------------------------------------------------------

    def _read_request_headers(self, ex: _Exchange, headers: ep.HttpHeaders) -> None:
        model_header = self.settings.model_header
        values = messages.header_values(headers, ("x-request-id", model_header))
        ex.request_id = values.get("x-request-id") or uuid.uuid4().hex
        ex.model = values.get(model_header) or None
        ex.headers = headers

    async def _route(
        self,
        ex: _Exchange,
        context: grpc.aio.ServicerContext,
        *,
        has_body: bool,
        trailers: bool = False,
    ) -> bool:
        """Lease and answer the request phases. False if the request was refused (the
        ImmediateResponse is sent; the stream should end)."""
        try:
            lease = await self._lease(ex, has_body)
        except RequestRejected as exc:
            await context.write(self._reject(ex, exc))
            return False
        ex.lease = lease
        ex.granted_at = time.perf_counter()
        await context.write(messages.routed(lease, len(ex.body) if has_body else None))
        if has_body:
            body, ex.body = ex.body, bytearray()
            for resp in messages.body_chunks("request_body", body, not trailers):
                await context.write(resp)
            if trailers:
                await context.write(messages.REQUEST_TRAILERS_OK)
        return True

    async def _lease(self, ex: _Exchange, has_body: bool) -> Lease:
        """A lease for this request. Raises RequestRejected; waits in the pool's queue."""
        started = time.perf_counter()
        director = self._director
        if not director.serving:
            director.check_serving()
        pool = self._registry.pools.get(self.settings.pool)
        if pool is None:
            raise NotServing(f"pool {self.settings.pool!r} is not configured")
        model = ex.model
        if has_body:
            model = choose_model(model, parse_body(ex.body), self.settings.model_header)
        if model is not None and model not in pool.spec.models:
            raise UnknownModel(f"model {model[:MAX_MODEL_LEN]!r} is not served by this pool")
        source = PickedRequest(ex.headers, ex.body if has_body else None)
        return await director.lease(
            Request(ex.request_id, pool.name, model, ex.hint, source, started)
        )

    def _reject(self, ex: _Exchange, exc: RequestRejected) -> ep.ProcessingResponse:
        ex.outcome = f"rejected_{exc.code}"
        self._director.refused(exc, ex.request_id, self.settings.pool)
        return responses.rejected(exc, ex.request_id)

    def _check_served(self, ex: _Exchange, served: str | None) -> None:
        lease = ex.lease
        if served is None or lease is None or served.split(",", 1)[0] == lease.address:
            return
        self._metrics.upstream_mismatch.labels(lease.pool.name).inc()
        logger.error(
            "request %s was leased %s but the gateway sent it to %s",
            ex.request_id, lease.address, served,
        )  # fmt: skip

    # -- the end --------------------------------------------------------------------------

    def _response_ended(self, ex: _Exchange) -> None:
        status = ex.status
        if status >= 500 or status == 0:
            ex.outcome = "upstream_error"
        elif status >= 400:
            ex.outcome = "client_error"
        else:
            ex.outcome = "success"
        self._release(ex)

    def _finish(self, ex: _Exchange) -> None:
        """Runs whatever ended the stream: a lease still held is released here."""
        if ex.lease is not None and ex.lease.ended is None:
            if ex.outcome is None:
                # Envoy closed the stream before the response ended. Not for a failure
                # upstream: Envoy answers a refused, reset or timed-out request itself, and
                # that reply comes through the response phase like any other (measured,
                # Envoy 1.40). So the client left (before the response or during it).
                ex.outcome = "client_disconnect"
            self._release(ex)

    def _release(self, ex: _Exchange) -> None:
        lease = ex.lease
        if lease is None or lease.ended is not None:
            return
        duration = time.perf_counter() - ex.granted_at
        outcome = ex.outcome or "success"
        if not self._director.finish(lease, outcome, _for_replica(ex), duration):
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s ended on %s: %s (status %d), lease %s released after %.1f ms",
                ex.request_id, lease.address, outcome, ex.status, lease.id[:8], duration * 1e3,
            )  # fmt: skip


def _for_replica(ex: _Exchange) -> Outcome:
    """How the request counts for its replica's outlier detection (module doc, step 5)."""
    status = ex.status
    if ex.outcome == "client_disconnect":
        return Outcome.IGNORED
    return classify(status, answered=ex.answered, upstream_failed=status >= 500 and not ex.answered)
