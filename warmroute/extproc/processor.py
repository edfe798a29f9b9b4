"""The ext_proc service of own-Envoy mode: Envoy asks "which replica?" once per request.

A stream adapter around the director (``warmroute.director``). Per stream (= per HTTP
request), in order:
  1. read the request headers (the only phase configured) and the body's ``model`` that
     Envoy's json_to_metadata filter forwarded with them (``warmroute.body`` metadata);
     ``GET /v1/models`` is answered here from the registry, with no slot;
  2. choose the model (header wins, must agree with the body; ``warmroute.request.model``)
     and resolve the pool: the one the route marked on the stream's gRPC metadata, else
     the body's model, whose pool route Envoy takes after we set the model header;
  3. hand the ``Request`` to ``Director.lease`` (which prices, hints, ranks, leases or
     waits); a refusal is counted by ``Director.refused`` and answered as an
     ImmediateResponse (``warmroute.request.responses``);
  4. reply with ``envoy.lb`` metadata pinning the replica and our lease id in the
     ``warmroute`` namespace. The access log returns that id when the request ends
     (``warmroute.extproc.accesslog``);
  5. end the stream with an OK status at once (Envoy needs nothing more from us), so no
     wake-up is spent on Envoy's half-close.
In a pool with ``policy: prefix_affinity`` that hashes prompts, the director needs the
prompt: the headers are answered with a ``mode_override`` asking Envoy for this request's
body (BUFFERED), and the decision goes out with the body's answer instead
(``_prompt_body``). Other pools never see a body. If the stream is reset while waiting
(client gone), the director withdraws the wait.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import unquote

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf.struct_pb2 import Struct

from warmroute.director import Director, Request
from warmroute.envoy_names import BODY_NAMESPACE, POOL_METADATA_KEY
from warmroute.errors import ModelMismatch, RequestRejected, UnknownModel
from warmroute.extproc import models_api
from warmroute.request import responses
from warmroute.request.model import (
    MAX_MODEL_LEN,
    MODELS_PATH,
    NO_BODY,
    BodyModel,
    BodyState,
    choose_model,
)
from warmroute.request.source import EnvoyRequest, first_header, header_value
from warmroute.state import EndReason, Lease, Pool, Registry

logger = logging.getLogger(__name__)

_MODELS_PREFIX = MODELS_PATH + "/"
_MODELS_PATH_BYTES = MODELS_PATH.encode()


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Adapter from ext_proc streams to the director. Runs on the registry's event loop.

    ``registry`` is read for the pool a route names or a model maps to, and for
    ``GET /v1/models``; every decision is ``director``'s.
    """

    def __init__(self, director: Director, registry: Registry, model_header: str) -> None:
        self._director = director
        self._registry = registry
        self._model_header = model_header

    @property
    def model_header(self) -> str:
        """The request header naming the model (``routing.model_header``)."""
        return self._model_header

    @model_header.setter
    def model_header(self, name: str) -> None:
        self._model_header = name

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        # The reader/writer form (context.read/write; ``request_iterator`` is unused): no
        # async-generator layers between gRPC and this coroutine.
        routed_pool = _pool_marker(context)
        while (request := await context.read()) is not grpc.aio.EOF:
            if request.HasField("request_headers"):
                try:
                    await context.write(await self._decide(request, routed_pool, context))
                except _StreamEnded:
                    return  # Envoy closed it before sending the body we asked for
                # Request headers are the only phase configured: return at once, so our
                # status goes out without waiting for Envoy's half-close. Were later phases
                # sent anyway, Envoy takes the closed stream as "no more processing".
                return
            # Only request headers are configured; answer anything else unchanged so a
            # misconfigured Envoy degrades to pass-through instead of hanging.
            await context.write(_passthrough(request))

    async def _decide(
        self,
        request: ep.ProcessingRequest,
        routed_pool: str | None,
        context: grpc.aio.ServicerContext | None = None,
    ) -> ep.ProcessingResponse:
        """The answer to the request headers (or, for a prefix-affinity pool, to the body
        it then reads from ``context``; without one it decides on the headers)."""
        received = time.perf_counter()
        headers = request.request_headers
        request_id, header_model, models_path = _read_headers(headers, self._model_header)
        if models_path is not None:
            return self._answer_models(models_path, request_id)
        director = self._director
        pool: Pool | None = None
        set_header: tuple[str, str] | None = None
        body: bytes | None = None
        try:
            if not director.serving:
                director.check_serving()  # a standby refuses before reading anything
            # A request without a body has nothing to read, whatever its content-type made
            # json_to_metadata report.
            found = (
                None
                if headers.end_of_stream
                else request.metadata_context.filter_metadata.get(BODY_NAMESPACE)
            )
            if header_model and routed_pool is not None:
                # The common header-routed case, kept lean: the body may only agree.
                model = header_model
                if found is not None:
                    body_model = found.fields.get("model")
                    if body_model is not None and body_model.string_value != header_model:
                        choose_model(header_model, _body_model(found), self._model_header)
                pool = self._resolve_routed(routed_pool)
            elif routed_pool is not None:
                # A route chose the pool without the model header (e.g. by path).
                pool = self._resolve_routed(routed_pool)
                model = _check_body_in_pool(_body_model(found), pool)
            else:
                model = choose_model(header_model, _body_model(found), self._model_header)
                pool = self._resolve(model, from_header=bool(header_model))
                if not header_model:
                    set_header = (self._model_header, model)
            hint = pool.spec.affinity
            if hint is not None and hint.block_chars > 0:
                body = await _prompt_body(headers, context)
            source = EnvoyRequest(headers, found, body)
            lease = await director.lease(
                Request(request_id, pool.spec.name, model, None, source, received)
            )
        except RequestRejected as exc:
            director.refused(exc, request_id, None if pool is None else pool.name)
            return responses.rejected(exc, request_id)  # an ImmediateResponse fits any phase
        return self._hand_over(lease, set_header, body is not None)

    def _hand_over(
        self, lease: Lease, set_header: tuple[str, str] | None, in_body: bool = False
    ) -> ep.ProcessingResponse:
        try:
            resp = responses.routed(lease, set_header)
            return _as_body_response(resp) if in_body else resp
        except BaseException:
            lease.release(EndReason.CANCELLED)
            raise

    def _resolve(self, model: str, *, from_header: bool) -> Pool:
        """The pool of a request no route assigned (its model came from the body, or a
        header that matched no route)."""
        pool = self._registry.pool_for_model(model)
        if pool is None:
            raise UnknownModel(f"model {model[:MAX_MODEL_LEN]!r} is not served here")
        if not from_header:
            # From the body: we set the model header and Envoy re-matches the pool's route.
            return pool
        # A known model in a header that no route matched means Envoy's routes are stale or
        # the header was not matchable (e.g. sent twice): refuse rather than guess.
        raise UnknownModel(f"model {model[:MAX_MODEL_LEN]!r} is not routable right now")

    def _resolve_routed(self, routed_pool: str) -> Pool:
        pool = self._registry.pools.get(routed_pool)
        if pool is None:
            # Envoy's routes name a pool we no longer have (config rollout in progress).
            raise UnknownModel(f"pool {routed_pool!r} is not configured")
        return pool

    def _answer_models(self, path: str, request_id: str) -> ep.ProcessingResponse:
        view = self._registry.view()
        if path == MODELS_PATH:
            return responses.answer(200, models_api.model_list(view), request_id)
        model = unquote(path[len(_MODELS_PREFIX) :])
        body = models_api.model_object(view, model)
        if body is None:
            error = UnknownModel(f"model {model[:MAX_MODEL_LEN]!r} is not served here")
            return responses.rejected(error, request_id)
        return responses.answer(200, body, request_id)


# The largest body asked for: a whole body is one gRPC message, and gRPC refuses messages
# over 4 MiB by default (the request would fail). A chunked body's size is unknown.
_HINT_BODY_MAX = 3 << 20


class _StreamEnded(Exception):
    """Envoy closed the stream before sending the body we asked for: nothing to answer."""


_MODE = processing_mode_pb2.ProcessingMode
# This request's remaining phases: its whole body, nothing else (the filter's own mode
# sends only request headers; an override replaces the whole mode, so all is spelt out).
_BODY_PLEASE = ep.ProcessingResponse()
_BODY_PLEASE.request_headers.SetInParent()
_BODY_PLEASE.mode_override.CopyFrom(
    _MODE(
        request_header_mode=_MODE.SEND,
        response_header_mode=_MODE.SKIP,
        request_body_mode=_MODE.BUFFERED,
        response_body_mode=_MODE.NONE,
        request_trailer_mode=_MODE.SKIP,
        response_trailer_mode=_MODE.SKIP,
    )
)


async def _prompt_body(
    headers: ep.HttpHeaders, context: grpc.aio.ServicerContext | None
) -> bytes | None:
    """The request's body, asked of Envoy for its prompt (a prefix-affinity pool that
    hashes prompts), or None: the decision then answers the body message. Raises
    _StreamEnded if Envoy closed the stream first.

    Asked only for a request with a body of a known size up to ``_HINT_BODY_MAX``; others
    are decided on their session alone. Envoy holds the request meanwhile (its buffer
    limit applies, as for json_to_metadata).
    """
    if headers.end_of_stream or context is None:
        return None
    size = first_header(headers, "content-length") or ""
    if not size.isdigit() or int(size) > _HINT_BODY_MAX:
        return None
    await context.write(_BODY_PLEASE)
    msg = await context.read()
    if msg is grpc.aio.EOF:
        raise _StreamEnded
    if not msg.HasField("request_body"):
        # Not what we asked for (never seen: an Envoy that ignores overrides sends nothing
        # at all): answer it unchanged and stop; Envoy's fallback policy routes it.
        await context.write(_passthrough(msg))
        raise _StreamEnded
    body: bytes = msg.request_body.body
    return body


def _as_body_response(resp: ep.ProcessingResponse) -> ep.ProcessingResponse:
    """The headers' routing answer as the answer to the buffered body: Envoy still holds
    the headers then, so their mutations (and a route re-match) apply just the same."""
    out = ep.ProcessingResponse()
    out.request_body.response.CopyFrom(resp.request_headers.response)
    out.dynamic_metadata.CopyFrom(resp.dynamic_metadata)
    return out


def _pool_marker(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == POOL_METADATA_KEY:
            return str(value)
    return None


def _read_headers(headers: ep.HttpHeaders, model_header: str) -> tuple[str, str | None, str | None]:
    """(request id, model header, the path if it is ``/v1/models...`` else None)."""
    request_id = ""
    model: str | None = None
    models_path: str | None = None
    # ``header_value`` inlined for the two headers every request has: this loop runs
    # over every header of every request.
    for h in headers.headers.headers:
        key = h.key
        if key == "x-request-id":
            raw = h.raw_value
            request_id = raw.decode("utf-8", "replace") if raw else str(h.value)
        elif key == model_header:
            raw = h.raw_value
            model = raw.decode("utf-8", "replace") if raw else str(h.value)
        elif key == ":path" and h.raw_value.startswith(_MODELS_PATH_BYTES):
            path = header_value(h).partition("?")[0].rstrip("/")
            if path == MODELS_PATH or path.startswith(_MODELS_PREFIX):
                models_path = path
    return request_id, model, models_path


def _check_body_in_pool(body: BodyModel, pool: Pool) -> str:
    """The body's model must be one the route's pool serves (if the body names one)."""
    if body.state is BodyState.MODEL:
        assert body.model is not None
        if body.model not in pool.spec.models:
            raise ModelMismatch(
                f"the route serves pool {pool.name!r} but the body's model "
                f"{body.model[:MAX_MODEL_LEN]!r} is not one of its models"
            )
        return body.model
    return pool.spec.models[0] if pool.spec.models else pool.name


def _body_model(found: Struct | None) -> BodyModel:
    """What json_to_metadata read from the body (``warmroute.body`` metadata), if it ran."""
    if found is None:
        return NO_BODY
    fields = found.fields
    stream = fields["stream"].string_value == "true" if "stream" in fields else False
    if "model" in fields:
        return BodyModel(BodyState.MODEL, fields["model"].string_value, stream)
    if "body" in fields and fields["body"].string_value == "invalid":
        return BodyModel(BodyState.INVALID)
    return BodyModel(BodyState.NO_MODEL, stream=stream)


def _passthrough(request: ep.ProcessingRequest) -> ep.ProcessingResponse:
    resp = ep.ProcessingResponse()
    kind = request.WhichOneof("request")
    if kind:  # the response oneof mirrors the request's field names
        getattr(resp, kind).SetInParent()
    return resp
