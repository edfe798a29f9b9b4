"""Fuzz the ext_proc decision with arbitrary headers: it always answers with a routing
decision or a clean rejection, never raises, and never leaks a lease."""

from __future__ import annotations

import asyncio

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from hypothesis import given, settings
from hypothesis import strategies as st

from warmroute.director import Director, OutlierReporter
from warmroute.extproc.processor import ExternalProcessor
from warmroute.metrics import Metrics
from warmroute.state import Phase, PoolSpec, Registry, ReplicaUpsert
from warmroute.state.ask import Ask

_names = st.one_of(
    st.sampled_from(["x-model", "x-request-id", "x-gateway-destination-endpoint", ":path"]),
    st.text(min_size=1, max_size=20),
)
_values = st.one_of(
    st.sampled_from(["m", "", "other", "/v1/models", "/v1/models/m"]), st.binary(max_size=300)
)
# What json_to_metadata may forward: the body's model, a flag, anything else.
_body_fields = st.dictionaries(
    st.sampled_from(["model", "body", "stream", "junk"]),
    st.one_of(st.sampled_from(["m", "other", "invalid", "no_model", "true", ""]), st.text()),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(_names, _values), max_size=12),
    routed=st.sampled_from([None, "p", "ghost"]),
    busy=st.booleans(),
    body=st.one_of(st.none(), _body_fields),
)
def test_any_headers_get_a_decision_or_a_clean_rejection(
    headers: list[tuple[str, bytes | str]],
    routed: str | None,
    busy: bool,
    body: dict[str, str] | None,
) -> None:
    registry = Registry()
    registry.configure([PoolSpec("p", ("m",), max_waiting=0)])
    registry.apply(ReplicaUpsert("p", "10.0.0.1:80", 1, Phase.WARM))
    held = registry.pools["p"].try_acquire(Ask("held")) if busy else None
    metrics = Metrics(registry.view)
    director = Director(registry, metrics, outliers=OutlierReporter(registry, metrics))
    processor = ExternalProcessor(director, registry, "x-model")
    msg = ep.ProcessingRequest()
    for key, value in headers:
        raw = value if isinstance(value, bytes) else value.encode()
        msg.request_headers.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=raw))
    if body is not None:
        fields = msg.metadata_context.filter_metadata["warmroute.body"].fields
        for key, text in body.items():
            fields[key].string_value = text

    resp = asyncio.run(processor._decide(msg, routed))

    if resp.HasField("immediate_response"):
        status = resp.immediate_response.status.code
        assert status in (200, 400, 404, 429, 503)
        if status == 200:  # GET /v1/models: answered here, never a lease
            assert resp.immediate_response.body.startswith(b'{"')
        else:
            assert resp.immediate_response.body.startswith(b'{"error": {')
        assert registry.view().leases == (1 if held else 0)
    else:
        body_model = (body or {}).get("model")
        assert (routed == "p" or (routed is None and body_model == "m")) and not busy
        fields = resp.dynamic_metadata.fields
        assert (
            fields["envoy.lb"].struct_value.fields["x-gateway-destination-endpoint"].string_value
            == "10.0.0.1:80"
        )
        assert "x-gateway-destination-endpoint" in (
            resp.request_headers.response.header_mutation.remove_headers
        )
        assert registry.view().leases == 1
