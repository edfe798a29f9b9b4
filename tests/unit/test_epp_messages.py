"""Endpoint picker mode, pure parts: the protocol's messages and the `epp:` config section."""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from warmroute import config
from warmroute.director.subsets import eligible_addresses
from warmroute.epp.messages import (
    CHUNK_BYTES,
    SUBSET_KEY,
    SUBSET_NAMESPACE,
    body_chunks,
    subset_hint,
)
from warmroute.errors import ConfigError

POOLS = "pools:\n  - {name: a, models: [m1]}\n  - {name: b, models: [m2]}\n"


def _with_hint(value: object) -> ep.ProcessingRequest:
    req = ep.ProcessingRequest()
    field = req.metadata_context.filter_metadata[SUBSET_NAMESPACE].fields[SUBSET_KEY]
    if isinstance(value, list):
        field.list_value.SetInParent()
        for v in value:
            field.list_value.values.add().string_value = v
    elif isinstance(value, str):
        field.string_value = value
    else:
        field.number_value = 1
    return req


def test_subset_hint_shapes() -> None:
    assert subset_hint(ep.ProcessingRequest()) is None
    other = ep.ProcessingRequest()
    other.metadata_context.filter_metadata["envoy.lb"].fields["x"].string_value = "y"
    assert subset_hint(other) is None
    assert subset_hint(_with_hint(["1.2.3.4:80", "5.6.7.8:80"])) == ("1.2.3.4:80", "5.6.7.8:80")
    assert subset_hint(_with_hint("1.2.3.4:80, 5.6.7.8:80,")) == ("1.2.3.4:80", "5.6.7.8:80")
    assert subset_hint(_with_hint(["1.2.3.4:80,5.6.7.8:80"])) == ("1.2.3.4:80", "5.6.7.8:80")
    assert subset_hint(_with_hint([])) == ()
    assert subset_hint(_with_hint(3)) is None  # not a list nor a string: ignored


def test_eligible_addresses_exact_or_by_ip() -> None:
    replicas = ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000", "[fd00::1]:8000"]
    assert eligible_addresses(["10.0.0.1:8001"], replicas) == {"10.0.0.1:8001"}
    assert eligible_addresses(["10.0.0.1"], replicas) == {"10.0.0.1:8000", "10.0.0.1:8001"}
    assert eligible_addresses(["fd00::1"], replicas) == {"[fd00::1]:8000"}
    assert eligible_addresses(["192.0.2.9:1", "nonsense"], replicas) == frozenset()


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES + 5])
@pytest.mark.parametrize("end", [True, False])
def test_body_chunks_cover_the_body_once(size: int, end: bool) -> None:
    body = bytes(range(256)) * (size // 256 + 1)
    body = body[:size]
    out = list(body_chunks("request_body", body, end))
    streamed = [r.request_body.response.body_mutation.streamed_response for r in out]
    assert b"".join(s.body for s in streamed) == body
    assert all(len(s.body) <= CHUNK_BYTES for s in streamed)
    assert [s.end_of_stream for s in streamed] == [False] * (len(out) - 1) + [end]


def test_epp_config_defaults_and_errors() -> None:
    one = config.parse("pools:\n  - {name: a, models: [m1]}\nepp: {enabled: true}\n")
    assert one.epp_pool == "a" and one.epp.tls is True
    off = config.parse(POOLS + "epp: {enabled: true, pool: b, tls: off}\n")
    assert off.epp_pool == "b" and off.epp.tls is False
    cases = {
        "epp: {enabled: true}\n": "epp.pool (line 4): set it to one of a, b",
        "epp: {enabled: true, pool: c}\n": "epp.pool (line 4): 'c' is not a pool",
        "epp: {tls: {cert_file: x}}\n": "epp.tls.key_file (line 4): required key is missing",
        "epp: {tls: maybe}\n": "epp.tls (line 4): expected on, off or {cert_file, key_file}",
        "epp: {enable: true}\n": "epp.enable (line 4): unknown key",
    }
    for extra, expected in cases.items():
        with pytest.raises(ConfigError) as info:
            config.parse(POOLS + extra, "f.yaml")
        assert expected in str(info.value), str(info.value)
    with pytest.raises(ConfigError, match=r"epp\.pool: set it to one of a, b"):
        config.enable_epp(config.parse(POOLS), "f.yaml")
