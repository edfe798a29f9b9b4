"""Unit tests for the simulated replica's OpenAI shapes and generation timing (pure, no I/O)."""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from typing import Any

import pytest

from warmroute.sim import openai_api
from warmroute.sim.openai_api import (
    ApiRequest,
    ChunkStream,
    InvalidRequest,
    Reply,
    count_tokens,
    embedding,
    parse_request,
    text,
)
from warmroute.sim.received import RequestLog
from warmroute.sim.service_time import (
    DEFAULT_TOKENS,
    ServiceTime,
    TokenTiming,
    plan_generation,
)


def parse(kind: openai_api.Kind, body: Any) -> ApiRequest:
    return parse_request(kind, json.dumps(body).encode(), "default-model")


def test_empty_body_is_an_empty_object_and_the_model_defaults() -> None:
    assert parse_request("chat", b"", "m") == ApiRequest("chat", "m")
    assert parse_request("completion", b"  \n", "m").model == "m"


def test_fields_are_read() -> None:
    chat = parse(
        "chat",
        {
            "model": "llama",
            "messages": [{"role": "user", "content": "12345678"}, {"role": "assistant"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 9,
            "max_completion_tokens": 5,  # the newer name wins
            "temperature": 0.2,  # unknown to the sim: ignored
        },
    )
    assert chat == ApiRequest("chat", "llama", True, True, 5, prompt_tokens=2)
    completion = parse("completion", {"prompt": [[1, 2, 3], [4]], "max_tokens": 1})
    assert (completion.prompt_tokens, completion.max_tokens, completion.stream) == (4, 1, False)
    assert parse("completion", {"prompt": [7, 8]}).prompt_tokens == 2
    assert parse("completion", {"prompt": ["ab", "abcde"]}).prompt_tokens == 1 + 2


def test_embedding_inputs() -> None:
    one = parse("embedding", {"input": "hello", "dimensions": 4, "encoding_format": "base64"})
    assert (one.inputs, one.dimensions, one.encoding_format) == (("hello",), 4, "base64")
    ids = parse("embedding", {"input": [[1, 2], [3]]})
    assert ids.inputs == ("[1, 2]", "[3]") and ids.prompt_tokens == 3
    assert parse("embedding", {"input": [5, 6, 7]}).inputs == ("[5, 6, 7]",)
    assert parse("embedding", {}).inputs == ("",)  # lenient: any body routes to any path


@pytest.mark.parametrize(
    ("kind", "raw", "code", "param"),
    [
        ("chat", b"{", "invalid_json", None),
        ("chat", b"\xff", "invalid_json", None),
        ("chat", b"[]", "invalid_body", None),
        ("completion", b'"text"', "invalid_body", None),
        ("completion", b"null", "invalid_body", None),
        ("chat", b'{"model": ""}', "invalid_value", "model"),
        ("chat", b'{"model": ["a"]}', "invalid_value", "model"),
        ("chat", b'{"stream": 1}', "invalid_value", "stream"),
        ("chat", b'{"stream_options": []}', "invalid_value", "stream_options"),
        ("chat", b'{"stream_options": {"include_usage": "yes"}}', "invalid_value",
         "stream_options.include_usage"),
        ("chat", b'{"max_tokens": 0}', "invalid_value", "max_tokens"),
        ("chat", b'{"max_tokens": 2.5}', "invalid_value", "max_tokens"),
        ("chat", b'{"max_tokens": true}', "invalid_value", "max_tokens"),
        ("chat", b'{"max_completion_tokens": 1000001}', "invalid_value", "max_completion_tokens"),
        ("chat", b'{"messages": {}}', "invalid_value", "messages"),
        ("chat", b'{"messages": ["hi"]}', "invalid_value", "messages[0]"),
        ("chat", b'{"messages": [{"content": 5}]}', "invalid_value", "messages[0].content"),
        ("completion", b'{"prompt": 5}', "invalid_value", "prompt"),
        ("completion", b'{"prompt": ["a", 1]}', "invalid_value", "prompt"),
        ("embedding", b'{"input": {}}', "invalid_value", "input"),
        ("embedding", b'{"input": []}', "invalid_value", "input"),
        ("embedding", b'{"input": [[]]}', "invalid_value", "input"),
        ("embedding", b'{"input": "a", "encoding_format": "hex"}', "invalid_value",
         "encoding_format"),
        ("embedding", b'{"input": "a", "dimensions": 0}', "invalid_value", "dimensions"),
    ],
)  # fmt: skip
def test_invalid_requests_name_the_problem(
    kind: openai_api.Kind, raw: bytes, code: str, param: str | None
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(kind, raw, "m")
    error = caught.value.body()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["message"]


def test_non_streamed_bodies() -> None:
    chat = Reply.new(ApiRequest("chat", "m", prompt_tokens=3))
    body = chat.completion(4, "stop")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text(4)},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    completion = Reply.new(ApiRequest("completion", "m")).completion(2, "length")
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == text(2) == " lorem ipsum"


def contents(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def test_framed_chat_stream_is_openais_framing() -> None:
    reply = Reply.new(ApiRequest("chat", "m", stream=True, include_usage=True, prompt_tokens=1))
    events = ChunkStream(reply, 3, "length", framed=True)
    tokens = [events.token(i) for i in range(3)]
    every = [*events.head, *tokens, *events.tail]

    assert [e["choices"][0]["delta"] for e in events.head] == [{"role": "assistant", "content": ""}]
    assert contents(tokens) == text(3)
    finish, usage = events.tail
    assert finish["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"
    }  # fmt: skip
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert all(e["usage"] is None for e in every[:-1])
    assert {e["id"] for e in every} == {reply.id}
    assert {e["object"] for e in every} == {"chat.completion.chunk"}


def test_unframed_stream_has_one_event_per_token() -> None:
    reply = Reply.new(ApiRequest("chat", "m"))
    events = ChunkStream(reply, 2, "stop", framed=False)
    assert events.head == events.tail == []
    first, last = events.token(0), events.token(1)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": openai_api.token(0)}
    assert first["choices"][0]["finish_reason"] is None
    assert last["choices"][0]["finish_reason"] == "stop" and "usage" not in last


def test_completion_stream_chunks() -> None:
    reply = Reply.new(ApiRequest("completion", "m", include_usage=True))
    events = ChunkStream(reply, 1, "stop", framed=True)
    assert events.head == []
    assert events.token(0)["choices"][0]["text"] == openai_api.token(0)
    assert events.tail[0]["choices"][0] == {
        "text": "", "index": 0, "logprobs": None, "finish_reason": "stop"
    }  # fmt: skip
    assert {e["object"] for e in [events.token(0), *events.tail]} == {"text_completion"}


def test_embeddings_are_deterministic_unit_vectors() -> None:
    a, b = embedding("hello"), embedding("hello")
    assert a == b and embedding("world") != a
    assert len(a) == openai_api.EMBEDDING_DIMENSIONS and len(embedding("x", 100)) == 100
    assert math.sqrt(sum(v * v for v in a)) == pytest.approx(1.0)
    request = ApiRequest("embedding", "e", inputs=("hello",), encoding_format="base64")
    encoded = Reply.new(request).embeddings()["data"][0]["embedding"]
    decoded = struct.unpack("<16f", base64.b64decode(encoded))
    assert decoded == pytest.approx(a, abs=1e-6)


def test_models_list_is_vllms_model_cards() -> None:
    adapter = openai_api.model_card("ad", 7, root="/loras/ad", parent="a")
    listed = openai_api.models(["a", "b"], 7, [adapter])
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["a", "b", "ad"]
    base = listed["data"][0]
    permission = base.pop("permission")
    assert base == {
        "id": "a", "object": "model", "created": 7, "owned_by": "vllm", "root": "a",
        "parent": None, "max_model_len": openai_api.MAX_MODEL_LEN,
    }  # fmt: skip
    assert permission[0]["object"] == "model_permission"
    assert permission[0]["id"].startswith("modelperm-")
    assert listed["data"][2]["parent"] == "a" and listed["data"][2]["root"] == "/loras/ad"


def test_count_tokens() -> None:
    assert [count_tokens("x" * n) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]


# -- generation timing ----------------------------------------------------------------------


def test_max_tokens_sets_the_length_and_the_time() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    gen = plan_generation(ServiceTime("lognormal", 100.0, 1.0), TokenTiming(50.0, 10.0), rng,
                          max_tokens=20)  # fmt: skip
    assert gen.tokens == 20
    assert gen.service_s == pytest.approx(0.05 + 20 * 0.01)
    assert [gen.due(i) for i in (0, 1, 19)] == pytest.approx([0.06, 0.07, 0.25])
    assert rng.getstate() == state  # no sample drawn


def test_without_max_tokens_the_distribution_times_default_tokens() -> None:
    gen = plan_generation(ServiceTime("fixed", 160.0), TokenTiming(), random.Random(1))
    assert (gen.tokens, gen.service_s) == (DEFAULT_TOKENS, 0.16)
    assert gen.due(DEFAULT_TOKENS - 1) == pytest.approx(0.16)


def test_test_headers_override_count_and_time() -> None:
    service, timing = ServiceTime("fixed", 1000.0), TokenTiming(50.0, 10.0)
    spread = plan_generation(service, timing, random.Random(), tokens=4, service_ms=200.0,
                             max_tokens=100)  # fmt: skip
    assert (spread.tokens, spread.service_s) == (4, 0.2)
    assert [spread.due(i) for i in range(4)] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    counted = plan_generation(service, timing, random.Random(), tokens=3, max_tokens=100)
    assert (counted.tokens, counted.service_s) == (3, pytest.approx(0.08))
    empty = plan_generation(service, timing, random.Random(), tokens=0)
    assert (empty.tokens, empty.service_s) == (0, 1.0)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_token_timing_rejects_bad_numbers(bad: float) -> None:
    with pytest.raises(ValueError, match="ttft_ms"):
        TokenTiming(ttft_ms=bad)
    with pytest.raises(ValueError, match="per_token_ms"):
        TokenTiming(per_token_ms=bad)


# -- the request log --------------------------------------------------------------------------


def test_request_log_is_bounded_keeps_small_bodies_and_redacts_credentials() -> None:
    log = RequestLog(capacity=3, keep_body_bytes=4)
    for i in range(5):
        log.record("POST", "/v1/x", {"x-request-id": f"r{i}", "authorization": "Bearer s"}, b"ab")
    big = log.record("POST", "/v1/x", {}, b"abcde")
    entries = log.entries()
    assert [e.seq for e in entries] == [4, 5, 6]
    assert [e.request_id for e in entries] == ["r3", "r4", None]
    assert entries[0].body == b"ab" and entries[0].headers["authorization"] == "[redacted]"
    assert big.body is None and big.body_bytes == 5
    assert big.to_json()["body_sha256"] == (
        "36bbe50ed96841d10443bcb670d6554f0a34b761be67ec9c4a8ad2c0c44ca42c"
    )
    log.clear()
    assert log.entries() == () and log.record("GET", "/", {}, b"").seq == 1
