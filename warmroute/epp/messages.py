"""The endpoint picker protocol's messages: what a gateway sends us and what we answer.

Pure functions over ``envoy.service.ext_proc.v3`` messages, no I/O and no state. The
protocol (Gateway API Inference Extension, proposal 004 "Endpoint Picker Protocol"):

* the gateway MAY restrict the pick with a *subset hint*: filter metadata
  ``envoy.lb.subset_hint`` -> ``x-gateway-destination-endpoint-subset``, a list of
  ``ip:port`` strings (a comma-separated string is accepted too); see ``subset_hint``
  (the director resolves it against the pool: ``warmroute.director.subsets``);
* the picker names the endpoint twice, with the same value: the request header
  ``x-gateway-destination-endpoint`` and the dynamic metadata ``envoy.lb`` ->
  ``x-gateway-destination-endpoint``; see ``routed``;
* the gateway MAY report the endpoint it used: ``envoy.lb`` ->
  ``x-gateway-destination-endpoint-served`` with the response; see ``served_endpoint``;
* bodies travel FULL_DUPLEX_STREAMED: everything Envoy sends of a body must come back as
  ``streamed_response`` body mutations (the picker may re-chunk; the last chunk carries
  ``end_of_stream`` unless trailers follow); see ``body_chunks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from warmroute.envoy_names import DESTINATION_KEY, LB_NAMESPACE, METADATA_NAMESPACE
from warmroute.state import Lease

SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"

# The largest body piece we send back in one message. Envoy recommends at most 64 KiB per
# streamed chunk; the reference picker uses 62,000 bytes for a safety margin, and so do we.
CHUNK_BYTES = 62_000

# Headers a client must not use to name a lease or a replica. The destination header itself
# is overwritten (never appended to), so a client's own value cannot survive.
_STRIPPED = ("x-warmroute-lease", "x-warmroute-pool", "x-warmroute-replica")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Constant answers: read-only, written as they are (grpc serializes on write).
RESPONSE_HEADERS_OK = ep.ProcessingResponse()
RESPONSE_HEADERS_OK.response_headers.SetInParent()
RESPONSE_TRAILERS_OK = ep.ProcessingResponse()
RESPONSE_TRAILERS_OK.response_trailers.SetInParent()
REQUEST_HEADERS_OK = ep.ProcessingResponse()
REQUEST_HEADERS_OK.request_headers.SetInParent()
REQUEST_TRAILERS_OK = ep.ProcessingResponse()
REQUEST_TRAILERS_OK.request_trailers.SetInParent()


def header_values(headers: ep.HttpHeaders, names: Iterable[str]) -> dict[str, str]:
    """The values of the wanted headers (lower-case names), first occurrence wins."""
    wanted = set(names)
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        key = h.key
        if key in wanted and key not in out:
            raw: bytes = h.raw_value
            out[key] = raw.decode("utf-8", "replace") if raw else h.value
    return out


def subset_hint(request: ep.ProcessingRequest) -> tuple[str, ...] | None:
    """The gateway's subset hint on this message: None if it sets none, else its entries.

    An empty tuple is a hint that allows nothing (the protocol then requires a 503). A value
    that is neither a list nor a string is ignored, as the reference picker ignores it.
    """
    if not request.HasField("metadata_context"):
        return None
    namespaces = request.metadata_context.filter_metadata
    if SUBSET_NAMESPACE not in namespaces:  # `in` first: [] on a proto map inserts
        return None
    fields = namespaces[SUBSET_NAMESPACE].fields
    if SUBSET_KEY not in fields:
        return None
    value = fields[SUBSET_KEY]
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        raw = [v.string_value for v in value.list_value.values if v.HasField("string_value")]
    elif kind == "string_value":
        raw = [value.string_value]
    else:
        return None
    return tuple(part.strip() for item in raw for part in item.split(",") if part.strip())


def served_endpoint(request: ep.ProcessingRequest) -> str | None:
    """The endpoint the gateway reports having used (``envoy.lb`` ->
    ``x-gateway-destination-endpoint-served`` in the metadata context), if it reports one."""
    if not request.HasField("metadata_context"):
        return None
    namespaces = request.metadata_context.filter_metadata
    if LB_NAMESPACE not in namespaces:
        return None
    fields = namespaces[LB_NAMESPACE].fields
    if SERVED_KEY not in fields or not fields[SERVED_KEY].HasField("string_value"):
        return None
    return str(fields[SERVED_KEY].string_value) or None


def routed(lease: Lease, body_length: int | None) -> ep.ProcessingResponse:
    """The answer to the request headers: send this request to the leased replica.

    Header and ``envoy.lb`` metadata carry the same ``ip:port``; our lease id goes into the
    ``warmroute`` namespace. ``body_length`` (None without a body) becomes content-length:
    Envoy drops that header in FULL_DUPLEX_STREAMED mode and our echo is byte-identical.
    The route cache is cleared so a gateway that routes on the header sees it.
    """
    address = lease.replica.address
    resp = ep.ProcessingResponse()
    common = resp.request_headers.response
    common.clear_route_cache = True
    mutation = common.header_mutation
    mutation.set_headers.append(_header(DESTINATION_KEY, address))
    if body_length is not None:
        mutation.set_headers.append(_header("content-length", str(body_length)))
    mutation.remove_headers.extend(_STRIPPED)
    fields = resp.dynamic_metadata.fields
    fields[LB_NAMESPACE].struct_value.fields[DESTINATION_KEY].string_value = address
    ours = fields[METADATA_NAMESPACE].struct_value.fields
    ours["lease"].string_value = lease.id
    ours["pool"].string_value = lease.pool.name
    return resp


def body_chunks(
    phase: str, body: bytes | bytearray | memoryview, end_of_stream: bool
) -> Iterator[ep.ProcessingResponse]:
    """``body`` as ``streamed_response`` mutations of ``phase`` (``request_body`` or
    ``response_body``), at most CHUNK_BYTES each; only the last one carries
    ``end_of_stream``. An empty body is one empty message (Envoy needs the end marker)."""
    view = memoryview(body)
    size = len(view)
    start = 0
    while True:
        end = min(size, start + CHUNK_BYTES)
        resp = ep.ProcessingResponse()
        streamed = getattr(resp, phase).response.body_mutation.streamed_response
        streamed.body = bytes(view[start:end])
        last = end >= size
        streamed.end_of_stream = end_of_stream and last
        yield resp
        if last:
            return
        start = end


def status_code(headers: ep.HttpHeaders) -> int:
    """The response's ``:status`` (0 if absent or malformed)."""
    value = header_values(headers, (":status",)).get(":status", "")
    return int(value) if value.isdigit() else 0


# Headers an upstream's response carries and Envoy's own (local) reply does not yet have
# when ext_proc sees it: Envoy adds ``date`` and ``server`` to its replies only after the
# filter chain, and ``x-envoy-upstream-service-time`` only to upstream responses.
_UPSTREAM_MARKS = frozenset(("date", "server", "x-envoy-upstream-service-time"))


def from_upstream(headers: ep.HttpHeaders) -> bool:
    """True if these response headers came from the replica, not from Envoy itself.

    Envoy's own reply (connection refused, reset, timeout: "upstream connect error ...")
    reaches the picker with ``:status``, ``content-length`` and ``content-type`` only; a
    model server's answer carries ``date`` (uvicorn, hyper and aiohttp send it on every
    response) and usually ``server``. A heuristic, as the protocol says nothing of who
    answered; it decides only whether a 503 or 429 means "full" or "failed".
    """
    return any(h.key in _UPSTREAM_MARKS for h in headers.headers.headers)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=_OVERWRITE,
    )
