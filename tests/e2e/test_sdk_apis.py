"""The official ``openai`` and ``anthropic`` SDKs, unmodified, through a real Envoy.

Every API the simulated replica speaks, streamed and not: Chat Completions, Completions and
Responses with the ``openai`` SDK, Messages with the ``anthropic`` SDK. Each SDK puts the
model and ``stream`` only in the JSON body; Envoy's ``json_to_metadata`` reads them for
routing whatever the path. Assertions are on what the SDK parsed (a well-formed answer: its
own types, text, usage, stop reason) and on what the replicas received.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.e2e.stack import MODEL, Stack, StackFactory

TOKENS = 5


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    s = await stack_factory(replicas=2, slots=1, service_ms=20, max_waiting=100)
    await s.wait_warm()
    return s


def _openai(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.url + "/v1", api_key="sk-test", max_retries=0, timeout=30
    )


def _anthropic(stack: Stack) -> anthropic.AsyncAnthropic:
    # The SDK adds /v1/messages itself.
    return anthropic.AsyncAnthropic(
        base_url=stack.url, api_key="sk-ant-test", max_retries=0, timeout=30
    )


def _arrived(stack: Stack) -> list[tuple[str, dict[str, object]]]:
    """(path, JSON body) of every request the replicas received, in no particular order."""
    got = [r for sim in stack.replicas for r in sim.received()]
    return [(r.path, json.loads(r.body)) for r in got]


async def _checked(stack: Stack, path: str, count: int) -> None:
    """``count`` requests reached the replicas on ``path``, with the model and ``stream`` in
    the body only, and none reached a full replica."""
    await stack.wait_idle()
    arrived = _arrived(stack)
    assert [p for p, _ in arrived] == [path] * count
    assert {b["model"] for _, b in arrived} == {MODEL}
    assert sorted(bool(b.get("stream")) for _, b in arrived) == [False] * (count - 1) + [True]
    for sim in stack.replicas:
        for r in sim.received():
            assert "x-model" not in r.headers or r.headers["x-model"] == MODEL
    assert stack.full_hits() == 0
    assert stack.metric("warmroute_leases_granted_total") == count
    assert stack.metric("warmroute_upstream_mismatch_total") == 0


async def test_chat_completions_streamed_and_not(stack: Stack) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "Hello!"}
    ]
    async with _openai(stack) as sdk:
        chat = await sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=TOKENS)
        assert chat.object == "chat.completion" and chat.model == MODEL
        assert chat.choices[0].message.content and chat.choices[0].finish_reason == "length"
        assert chat.usage is not None and chat.usage.completion_tokens == TOKENS
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=TOKENS, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == chat.choices[0].message.content
    await _checked(stack, "/v1/chat/completions", 2)


async def test_completions_streamed_and_not(stack: Stack) -> None:
    async with _openai(stack) as sdk:
        comp = await sdk.completions.create(model=MODEL, prompt="Say hi", max_tokens=TOKENS)
        assert comp.object == "text_completion" and comp.choices[0].text
        assert comp.usage is not None and comp.usage.completion_tokens == TOKENS
        stream = await sdk.completions.create(
            model=MODEL, prompt="Say hi", max_tokens=TOKENS, stream=True
        )
        parts = [c.choices[0].text async for c in stream]
    assert "".join(parts) == comp.choices[0].text
    await _checked(stack, "/v1/completions", 2)


async def test_responses_streamed_and_not(stack: Stack) -> None:
    async with _openai(stack) as sdk:
        resp = await sdk.responses.create(model=MODEL, input="Hello!", max_output_tokens=TOKENS)
        assert resp.object == "response" and resp.model == MODEL
        assert resp.output_text and resp.usage is not None
        assert resp.usage.output_tokens == TOKENS
        async with sdk.responses.stream(
            model=MODEL, input="Hello!", max_output_tokens=TOKENS
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == TOKENS
    assert kinds[-1] == "response.completed"
    assert final.output_text == resp.output_text
    await _checked(stack, "/v1/responses", 2)


async def test_anthropic_messages_streamed_and_not(stack: Stack) -> None:
    async with _anthropic(stack) as sdk:
        msg = await sdk.messages.create(
            model=MODEL, max_tokens=TOKENS, messages=[{"role": "user", "content": "Hello!"}]
        )
        assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
        assert msg.id and msg.stop_reason == "max_tokens"  # vLLM's ids: chatcmpl-…
        (block,) = msg.content
        assert block.type == "text" and block.text
        assert msg.usage.output_tokens == TOKENS
        async with sdk.messages.stream(
            model=MODEL, max_tokens=TOKENS, messages=[{"role": "user", "content": "Hello!"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert text == block.text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == TOKENS
    await _checked(stack, "/v1/messages", 2)
