"""A request's token cost as both front ends read it (``warmroute.request.tokens``, priced
by ``warmroute.director.pricing.cost``), and the ``tokens:`` config block."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf.struct_pb2 import Struct
from pydantic import ValidationError

from warmroute.config import Config
from warmroute.director import pricing
from warmroute.request.source import EnvoyRequest, PickedRequest
from warmroute.state.tokens import TokenSpec

SPEC = TokenSpec(10_000, default_max_tokens=100, chars_per_token=4)


def _headers(**values: str) -> list[base_pb2.HeaderValue]:
    return [
        base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode())
        for k, v in values.items()
    ]


def _fields(**values: object) -> Struct:
    s = Struct()
    s.update(values)
    return s


def _own_envoy_cost(
    spec: TokenSpec, headers: list[base_pb2.HeaderValue], found: Struct | None
) -> int:
    """The cost of a request own-Envoy mode sees: headers, json_to_metadata's fields."""
    msg = ep.HttpHeaders()
    msg.headers.headers.extend(headers)
    return pricing.cost(spec, EnvoyRequest(msg, found))


def _picker_cost(spec: TokenSpec, body: bytes) -> int:
    """The cost of a request the endpoint picker sees: its buffered body."""
    return pricing.cost(spec, PickedRequest(None, body or None))


def test_own_envoy_mode_reads_content_length_and_max_tokens() -> None:
    headers = _headers(x_model="m", content_length="400")
    assert _own_envoy_cost(SPEC, headers, _fields(max_tokens=30)) == 100 + 30
    # max_completion_tokens wins over max_tokens, as vLLM reads them.
    both = _fields(max_tokens=30, max_completion_tokens=7)
    assert _own_envoy_cost(SPEC, headers, both) == 100 + 7
    assert _own_envoy_cost(SPEC, headers, None) == 100 + 100  # the pool's default


@pytest.mark.parametrize("bad", ["30", True, -1, None])
def test_a_max_tokens_that_is_not_a_count_means_the_default(bad: object) -> None:
    headers = _headers(content_length="0")
    assert _own_envoy_cost(SPEC, headers, _fields(max_tokens=bad)) == 100


def test_no_or_nonsense_content_length_counts_no_prompt() -> None:
    assert _own_envoy_cost(SPEC, [], _fields(max_tokens=5)) == 5
    assert _own_envoy_cost(SPEC, _headers(content_length="-3"), _fields(max_tokens=5)) == 5


def test_epp_mode_reads_the_buffered_body() -> None:
    body = json.dumps({"model": "m", "prompt": "x" * 390, "max_tokens": 50}).encode()
    assert _picker_cost(SPEC, body) == -(-len(body) // 4) + 50
    body = json.dumps({"max_completion_tokens": 2.5, "max_tokens": 50}).encode()
    assert _picker_cost(SPEC, body) == -(-len(body) // 4) + 3
    for junk in (b"not json", b"[1, 2]", json.dumps({"max_tokens": "9"}).encode()):
        assert _picker_cost(SPEC, junk) == -(-len(junk) // 4) + 100
    assert _picker_cost(SPEC, b"") == 100


def _pool(**extra: object) -> dict[str, object]:
    return {"pools": [{"name": "p", "models": ["m"], **extra}]}


def test_the_tokens_block_becomes_the_pool_spec() -> None:
    cfg = Config.model_validate(
        _pool(tokens={"capacity": 8192, "default_max_tokens": 512, "chars_per_token": 3.5})
    )
    assert cfg.pools[0].spec().tokens == TokenSpec(8192, 512, 3.5)
    assert Config.model_validate(_pool()).pools[0].spec().tokens is None


@pytest.mark.parametrize(
    "block",
    [
        {},  # capacity is required
        {"capacity": 0},
        {"capacity": 100},  # the default max_tokens (1024) could never fit
        {"capacity": 100, "default_max_tokens": 50, "chars_per_token": 0},
        {"capacity": 100, "default_max_tokens": 50, "surprise": 1},
    ],
)
def test_a_bad_tokens_block_is_refused(block: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Config.model_validate(_pool(tokens=block))
