"""Envoy's own answers in warmroute's JSON error shape (HCM ``local_reply_config``).

Envoy answers some requests itself: a body over its buffer, a cluster that left, and above
all warmroute being unreachable. Left alone those are bare status lines (DESIGN.md fact 13:
503, empty body, no ``Retry-After``). The mappers here give them the body every warmroute
error has, ``{"error": {"code", "message", "request_id", "retry_after_seconds"?}}``.

Mappers only ever see local replies: a replica's response (a 503 included) is never one.
warmroute's own ``ImmediateResponse`` errors are local replies too, but already JSON, and
match no mapper here (their response code details are ``warmroute_<code>``; the one status
they share with a mapper, 413, means ``body_too_large`` either way).

What Envoy 1.40 answers when ext_proc gets no answer (``failure_mode_allow: false``;
measured with the real binary; no response flag is set in any case):

- warmroute not listening, stopped or restarting: the filter's ``status_on_error`` (ours:
  503; unset, as in gateways' configs: 500), details
  ``ext_proc_error_gRPC_error_14{...Connection_refused...}``;
- its host failing the cluster's health checks: the same status,
  ``ext_proc_error_gRPC_error_14{no_healthy_upstream...}``;
- a stream failed with gRPC status N (a server without the service: 12, a crash: 13):
  the same status, ``ext_proc_error_gRPC_error_N{<message>...}``;
- silent past the filter's ``message_timeout``: 504,
  ``ext_proc_error_per-message_timeout_exceeded``.

No access-log filter matches response code details directly, so the mapper uses the CEL
filter on ``response.code_details``. The same mapper goes into the gateway's Envoy in
endpoint picker mode (:func:`gateway_local_reply_config`, checked in at
``deploy/epp/gateway-local-reply.yaml``), there with a ``json_format`` body: Envoy escapes
each value, where a text template would splice a client-kept ``x-request-id`` in raw.
"""

from __future__ import annotations

import json

import yaml
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, json_format, wrappers_pb2

from warmroute.config import Config

UNAVAILABLE_CODE = "control_plane_unavailable"
# Local replies of an ext_proc filter that got no answer: a gRPC error on its stream (the
# server refused, gone, no healthy host, or failing the call) or its message timeout. Other
# ext_proc errors (a mutation Envoy refused: 500, details without this prefix) are bugs,
# not unavailability, and keep Envoy's answer.
UNAVAILABLE_EXPRESSION = (
    "response.code_details.startsWith('ext_proc_error_gRPC_error_')"
    " || response.code_details == 'ext_proc_error_per-message_timeout_exceeded'"
)
DEFAULT_RETRY_AFTER_SECONDS = 1


def local_reply_config(cfg: Config) -> hcm_pb2.LocalReplyConfig:
    """warmroute's own listener: a body over the limit, a removed pool, warmroute away."""
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            _body_too_large(cfg.routing.max_body_bytes),
            _cluster_removed(),
            control_plane_unavailable(cfg.routing.unreachable_retry_after_seconds),
        ]
    )


def gateway_local_reply_config(
    retry_after_seconds: int = DEFAULT_RETRY_AFTER_SECONDS,
) -> hcm_pb2.LocalReplyConfig:
    """What a gateway's HttpConnectionManager needs in endpoint picker mode: the picker
    unreachable answered like every other warmroute error (the other mappers concern
    warmroute's own listener only)."""
    mapper = control_plane_unavailable(retry_after_seconds, client_request_ids=True)
    return hcm_pb2.LocalReplyConfig(mappers=[mapper])


def gateway_yaml(retry_after_seconds: int = DEFAULT_RETRY_AFTER_SECONDS) -> str:
    """:func:`gateway_local_reply_config` as the YAML an operator pastes into the gateway's
    HttpConnectionManager (snake_case field names, as Envoy's docs write them)."""
    doc = json_format.MessageToDict(
        gateway_local_reply_config(retry_after_seconds), preserving_proto_field_name=True
    )
    # A Struct's keys come out in an order that changes from process to process: write
    # the body in the order we chose, so the checked-in file stays byte-stable.
    doc["mappers"][0]["body_format_override"]["json_format"] = _body(retry_after_seconds)
    plain = json.loads(json.dumps({"local_reply_config": doc}))  # plain dicts for yaml
    return _GATEWAY_HEADER + yaml.safe_dump(plain, sort_keys=False, width=100)


_GATEWAY_HEADER = """\
# warmroute as an endpoint picker (deploy/epp): add this to the HttpConnectionManager of the
# gateway's Envoy listener whose ext_proc filter calls warmroute. When the picker cannot be
# reached (stopped, restarting, failing over, no healthy host, silent past the filter's
# message_timeout), clients then get 503 + Retry-After and warmroute's JSON error
# {"error": {"code": "control_plane_unavailable", ...}} instead of an empty 500/503/504.
# It rewrites only those local replies of the ext_proc filter: replicas' responses and
# warmroute's own errors pass unchanged. Needs Envoy's CEL access-log filter
# (envoy.access_loggers.extension_filters.cel, in Envoy's standard build). Generated by
# warmroute.xds.local_replies.gateway_yaml; tests/e2e/fixtures/epp-envoy.yaml carries it.
"""


def control_plane_unavailable(
    retry_after_seconds: int, *, client_request_ids: bool = False
) -> hcm_pb2.ResponseMapper:
    """503 + ``Retry-After`` + JSON ``control_plane_unavailable`` for every local reply of
    an ext_proc filter that could not get an answer (the cases in the module's docstring).

    ``client_request_ids``: the HCM may keep a client's ``x-request-id`` (a gateway), so
    the body is ``json_format``, which escapes it. Otherwise (warmroute's listener:
    ``use_remote_address`` and no internal addresses, so Envoy makes every id) a fixed
    text, which keeps the generated config byte-stable where a Struct's key order is not.
    """
    cel = cel_pb2.ExpressionFilter(expression=UNAVAILABLE_EXPRESSION)
    body = substitution_format_string_pb2.SubstitutionFormatString(content_type="application/json")
    if client_request_ids:
        body.json_format.update(_body(retry_after_seconds))
    else:
        text = json.dumps(_body(retry_after_seconds)) + "\n"
        body.text_format_source.inline_string = text
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            extension_filter=accesslog_pb2.ExtensionFilter(
                name="envoy.access_loggers.extension_filters.cel", typed_config=_any(cel)
            )
        ),
        # One status whatever the filter's status_on_error (unset: 500) or its timeout (504)
        # said: retryable, like warmroute's own 503s.
        status_code=wrappers_pb2.UInt32Value(value=503),
        headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="retry-after", value=str(retry_after_seconds)),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
        body_format_override=body,
    )


def _body(retry_after_seconds: int) -> dict[str, object]:
    return {
        "error": {
            "code": UNAVAILABLE_CODE,
            "message": "the routing control plane (warmroute) could not be reached",
            "request_id": "%REQ(X-REQUEST-ID)%",
            "retry_after_seconds": retry_after_seconds,
        }
    }


def _body_too_large(max_body_bytes: int) -> hcm_pb2.ResponseMapper:
    """Envoy's own 413 (body over ``routing.max_body_bytes``)."""
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            status_code_filter=accesslog_pb2.StatusCodeFilter(
                comparison=accesslog_pb2.ComparisonFilter(
                    op=accesslog_pb2.ComparisonFilter.EQ,
                    value=base_pb2.RuntimeUInt32(default_value=413, runtime_key="unused"),
                )
            )
        ),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
            # A fixed text: the request id is Envoy's own UUID (use_remote_address), safe
            # inside the string.
            text_format_source=base_pb2.DataSource(
                inline_string=(
                    '{"error": {"code": "body_too_large", "message": "the request body is '
                    f"over this gateway's limit of {max_body_bytes} bytes "
                    '(routing.max_body_bytes)", "request_id": "%REQ(X-REQUEST-ID)%"}}\n'
                )
            ),
            content_type="application/json",
        ),
    )


def _cluster_removed() -> hcm_pb2.ResponseMapper:
    """A request that matched a route before its pool was removed, and reached the router
    after the pool's cluster left Envoy (a rare race: warmroute keeps a removed pool's
    cluster until its requests drain): 404 in the JSON shape, not an empty 503."""
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=["NC"])
        ),
        status_code=wrappers_pb2.UInt32Value(value=404),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(
                inline_string=(
                    '{"error": {"code": "unknown_model", "message": "the pool serving this '
                    'model was removed from the config", "request_id": "%REQ(X-REQUEST-ID)%"}}\n'
                )
            ),
            content_type="application/json",
        ),
    )


def _any(msg: cel_pb2.ExpressionFilter) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed
