"""The Responses and Messages APIs' shapes as the simulated replica builds them (pure).

The event order and fields are the APIs' own (OpenAI's Responses streaming events,
Anthropic's Messages streaming events); each stream is also read by the official SDK in
``tests/integration/test_sim_sdk_apis.py`` and through Envoy in ``tests/e2e``.
"""

from __future__ import annotations

import json

import pytest

from warmroute.sim import anthropic_api, apis, responses_api
from warmroute.sim.openai_api import InvalidRequest, text
from warmroute.sim.sse import encode


def test_the_table_knows_every_api_path() -> None:
    paths = {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses"}
    assert paths | {"/v1/messages"} == apis.PATHS
    assert apis.parse("/v1/other", b"{}", "m") is None
    assert apis.parse("/v1/responses", b"", "m") is not None  # empty body: {}


def test_responses_request_fields() -> None:
    body = {
        "model": "x",
        "instructions": "be brief",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        "max_output_tokens": 7,
        "stream": True,
    }
    req = responses_api.parse_request(json.dumps(body).encode(), "m")
    assert (req.kind, req.model, req.stream, req.max_tokens) == ("responses", "x", True, 7)
    assert req.prompt_tokens == 2 + 2  # "be brief", "hello": 4 characters a token
    for bad in ({"input": 5}, {"max_output_tokens": 0}, {"instructions": []}, {"stream": 1}):
        with pytest.raises(InvalidRequest):
            responses_api.parse_request(json.dumps(bad).encode(), "m")


def test_responses_body_completed_or_incomplete() -> None:
    req = responses_api.parse_request(b'{"input": "hi"}', "m")
    reply = responses_api.ResponseReply(req)
    done = reply.response(3)
    assert done["object"] == "response" and done["status"] == "completed"
    assert done["id"].startswith("resp_") and done["incomplete_details"] is None
    (item,) = done["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["content"][0] == {
        "type": "output_text", "text": text(3), "annotations": [], "logprobs": None,
    }  # fmt: skip
    assert done["usage"]["output_tokens"] == 3 and done["usage"]["total_tokens"] == 4
    cut = reply.response(3, limited=True)
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["output"][0]["status"] == "completed"  # vLLM's item says so even when cut


def test_responses_stream_order_and_sequence_numbers() -> None:
    req = responses_api.parse_request(b'{"stream": true}', "m")
    events = responses_api.ResponseEvents(responses_api.ResponseReply(req), 2, limited=False)
    stream = [*events.head, events.token(0), events.token(1), *events.tail]
    assert [e["type"] for e in stream] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
    assert stream[0]["response"]["status"] == "in_progress"
    assert stream[0]["response"]["output"] == []
    assert "".join(e["delta"] for e in stream[4:6]) == stream[6]["text"] == text(2)
    assert stream[-1]["response"]["status"] == "completed"
    assert events.named and not events.done_marker
    assert encode(stream[0], named=True).startswith(b"event: response.created\ndata: {")


def test_messages_request_fields() -> None:
    body = {
        "model": "claude-x",
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 9,
    }
    req = anthropic_api.parse_request(json.dumps(body).encode(), "m")
    assert (req.kind, req.model, req.stream, req.max_tokens) == ("messages", "claude-x", False, 9)
    assert req.prompt_tokens == 4
    with pytest.raises(InvalidRequest) as info:
        anthropic_api.parse_request(b'{"messages": {}}', "m")
    assert apis.invalid_body("/v1/messages", info.value) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": str(info.value)},
    }


def test_messages_body_and_stream() -> None:
    req = anthropic_api.parse_request(b'{"max_tokens": 2}', "m")
    reply = anthropic_api.MessageReply(req)
    msg = reply.message(2, limited=True)
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["content"] == [{"type": "text", "text": text(2)}]
    assert msg["stop_reason"] == "max_tokens" and "stop_sequence" not in msg  # as vLLM
    assert msg["usage"] == {"input_tokens": 0, "output_tokens": 2}
    assert reply.message(2, limited=False)["stop_reason"] == "end_turn"

    events = anthropic_api.MessageEvents(reply, 2, limited=True)
    stream = [*events.head, events.token(0), events.token(1), *events.tail]
    assert [e["type"] for e in stream] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = stream[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert "".join(e["delta"]["text"] for e in stream[2:4]) == text(2)
    assert stream[5]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert stream[5]["usage"] == {"input_tokens": 0, "output_tokens": 2}
    assert events.named and not events.done_marker
