"""A request as the director reads it from each front end's ext_proc messages
(``warmroute.request.source``): headers (first occurrence, raw or plain values), the
prompt, the body's size and its completion bound."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf.struct_pb2 import Struct

from warmroute.request.source import EnvoyRequest, PickedRequest, first_header


def _headers(*pairs: tuple[str, str], plain: tuple[str, str] | None = None) -> ep.HttpHeaders:
    msg = ep.HttpHeaders()
    for key, value in pairs:
        msg.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    if plain is not None:  # an Envoy that sends ``value`` rather than ``raw_value``
        msg.headers.headers.append(base_pb2.HeaderValue(key=plain[0], value=plain[1]))
    return msg


BODY = json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 7})


def test_headers_first_occurrence_raw_or_plain() -> None:
    headers = _headers(("x-priority", "batch"), ("x-priority", "interactive"), plain=("x-t", "a"))
    assert first_header(headers, "x-priority") == "batch"
    assert first_header(headers, "x-t") == "a"
    assert first_header(headers, "x-missing") is None
    assert first_header(None, "x-priority") is None
    for source in (EnvoyRequest(headers, None), PickedRequest(headers, None)):
        assert source.header("x-priority") == "batch"


def test_the_picker_reads_its_buffered_body() -> None:
    source = PickedRequest(_headers(), BODY.encode())
    assert source.body_size() == len(BODY)
    assert source.max_tokens() == 7
    assert source.prompt(100) == "user\nhello\n"
    empty = PickedRequest(None, None)
    assert (empty.body_size(), empty.max_tokens(), empty.prompt(100)) == (0, None, "")


def test_own_envoy_mode_reads_content_length_metadata_and_a_body_it_asked_for() -> None:
    found = Struct()
    found.update({"model": "m", "max_tokens": 7})
    headers = _headers(("content-length", str(len(BODY))))
    source = EnvoyRequest(headers, found)
    assert (source.body_size(), source.max_tokens(), source.prompt(100)) == (len(BODY), 7, "")
    asked = EnvoyRequest(headers, found, BODY.encode())
    assert asked.prompt(100) == "user\nhello\n"
