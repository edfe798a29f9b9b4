"""Fuzz the ext_proc decision with arbitrary headers: it always answers with a routing
decision or a clean rejection, never raises, and never leaks a lease."""

from __future__ import annotations

import asyncio

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from hypothesis import given, settings
from hypothesis import strategies as st

from warmroute.extproc.processor import ExternalProcessor
from warmroute.metrics import Metrics
from warmroute.state import Phase, PoolSpec, Registry, ReplicaUpsert

_names = st.one_of(
    st.sampled_from(["x-model", "x-request-id", "x-gateway-destination-endpoint", ":path"]),
    st.text(min_size=1, max_size=20),
)
_values = st.one_of(st.sampled_from(["m", "", "other"]), st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(_names, _values), max_size=12),
    routed=st.sampled_from([None, "p", "ghost"]),
    busy=st.booleans(),
)
def test_any_headers_get_a_decision_or_a_clean_rejection(
    headers: list[tuple[str, bytes | str]], routed: str | None, busy: bool
) -> None:
    registry = Registry()
    registry.configure([PoolSpec("p", ("m",), max_waiting=0)])
    registry.apply(ReplicaUpsert("p", "10.0.0.1:80", 1, Phase.WARM))
    held = registry.pools["p"].try_acquire("held") if busy else None
    processor = ExternalProcessor(registry, Metrics(registry.view), "x-model")
    msg = ep.HttpHeaders()
    for key, value in headers:
        raw = value if isinstance(value, bytes) else value.encode()
        msg.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=raw))

    resp = asyncio.run(processor._decide(msg, routed))

    if resp.HasField("immediate_response"):
        assert resp.immediate_response.status.code in (400, 404, 429, 503)
        assert resp.immediate_response.body.startswith(b'{"error": {')
        assert registry.view().leases == (1 if held else 0)
    else:
        assert routed == "p" and not busy
        fields = resp.dynamic_metadata.fields
        assert (
            fields["envoy.lb"].struct_value.fields["x-gateway-destination-endpoint"].string_value
            == "10.0.0.1:80"
        )
        assert "x-gateway-destination-endpoint" in (
            resp.request_headers.response.header_mutation.remove_headers
        )
        assert registry.view().leases == 1
