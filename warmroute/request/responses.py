"""ext_proc replies: the routing decision, or a rejection as an ImmediateResponse.

This is the one place where warmroute's request errors become HTTP responses, for the
own-Envoy ext_proc and the endpoint picker alike (Envoy's own 413 for a body over the limit
is a local reply in ``warmroute.xds.resources``, in the same JSON shape).
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from warmroute.envoy_names import DESTINATION_KEY, LB_NAMESPACE, METADATA_NAMESPACE
from warmroute.errors import RequestRejected
from warmroute.state import Lease

# Headers a client must not be able to send to influence routing or name a lease: Envoy is
# not configured to read them, and we strip them so no replica or later hop trusts them.
_STRIPPED = [DESTINATION_KEY, "x-warmroute-lease", "x-warmroute-pool", "x-warmroute-replica"]

# The constant part of every routing decision, copied into each (never sent itself).
_ROUTED = ep.ProcessingResponse()
_ROUTED.request_headers.response.header_mutation.remove_headers.extend(_STRIPPED)


def routed(lease: Lease, set_header: tuple[str, str] | None = None) -> ep.ProcessingResponse:
    """Pin the request to the leased replica and tag the stream with the lease id.

    ``set_header`` (the model header, when the model came from the body) is written into
    the request and Envoy re-matches its route on it, so the request takes the pool's
    route (cluster, timeout) like a request that carried the header.
    """
    resp = ep.ProcessingResponse()
    resp.CopyFrom(_ROUTED)
    if set_header is not None:
        common = resp.request_headers.response
        common.header_mutation.set_headers.append(_header(*set_header))
        common.clear_route_cache = True
    fields = resp.dynamic_metadata.fields
    fields[LB_NAMESPACE].struct_value.fields[DESTINATION_KEY].string_value = lease.replica.address
    ours = fields[METADATA_NAMESPACE].struct_value.fields
    ours["lease"].string_value = lease.id
    ours["pool"].string_value = lease.pool.name
    return resp


def rejected(error: RequestRejected, request_id: str) -> ep.ProcessingResponse:
    """An ImmediateResponse with a JSON body: ``{"error": {"code", "message", ...}}``."""
    body: dict[str, object] = {"code": error.code, "message": error.message}
    if request_id:
        body["request_id"] = request_id
    headers = [_header("content-type", "application/json")]
    if error.retry_after is not None:
        body["retry_after_seconds"] = error.retry_after
        headers.append(_header("retry-after", str(max(1, round(error.retry_after)))))
    resp = ep.ProcessingResponse()
    imm = resp.immediate_response
    # envoy.type.v3.StatusCode's values are the HTTP codes themselves.
    imm.status.code = error.http_status
    imm.headers.set_headers.extend(headers)
    imm.body = (json.dumps({"error": body}) + "\n").encode()
    imm.details = f"warmroute_{error.code}"
    return resp


def answer(status: int, body: bytes, request_id: str = "") -> ep.ProcessingResponse:
    """A JSON answer warmroute gives itself (``GET /v1/models``): no replica, no slot."""
    resp = ep.ProcessingResponse()
    imm = resp.immediate_response
    imm.status.code = status
    imm.headers.set_headers.append(_header("content-type", "application/json"))
    if request_id:
        imm.headers.set_headers.append(_header("x-request-id", request_id))
    imm.body = body
    imm.details = "warmroute_answered"
    return resp


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
