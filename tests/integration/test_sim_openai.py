"""The simulated replica speaks the OpenAI API: the official ``openai`` SDK as its client.

Synchronisation is a polled condition with a deadline (``wait_for``), never a sleep, and no
assertion depends on wall time (token and chunk counts instead).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from tests.helpers import wait_for
from warmroute.sim import ServiceTime, SimReplica
from warmroute.sim.openai_api import count_tokens, embedding, text
from warmroute.sim.service_time import DEFAULT_TOKENS, TokenTiming

Start = Callable[..., Awaitable[tuple[SimReplica, str]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start replicas on free ports, warm at once; ``(replica, base_url)``; stopped after."""
    started: list[SimReplica] = []

    async def _start(
        slots: int = 1, service_ms: float = 20.0, ttft_ms: float = 5.0, per_token_ms: float = 1.0
    ) -> tuple[SimReplica, str]:
        timing = TokenTiming(ttft_ms, per_token_ms)
        service = ServiceTime("fixed", service_ms)
        replica = SimReplica(slots, 0.0, service, 1, ["m1", "m2"], timing)
        started.append(replica)
        port = await replica.start("127.0.0.1", 0)
        await wait_for(lambda: replica.stats().warm, what="replica warm")
        return replica, f"http://127.0.0.1:{port}"

    yield _start
    for replica in started:
        await replica.stop()


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def accounted(replica: SimReplica) -> bool:
    """The accounting identity from replica.py's docstring."""
    s = replica.stats()
    settled = s.received_while_loading + s.received_while_full + s.completed + s.cancelled
    return s.received == settled + s.in_flight


async def test_completion(start: Start) -> None:
    replica, base = await start()
    async with sdk(base) as client:
        r = await client.completions.create(model="m2", prompt="hello world", max_tokens=5)
    assert (r.object, r.model, r.id[:5]) == ("text_completion", "m2", "cmpl-")
    assert r.choices[0].text == text(5) and r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (count_tokens("hello world"), 5)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    s = replica.stats()
    assert (s.received, s.completed, s.in_flight) == (1, 1, 0)


async def test_chat_completion_echoes_the_model(start: Start) -> None:
    replica, base = await start()
    messages: Any = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
    ]
    async with sdk(base) as client:
        r = await client.chat.completions.create(
            model="anything", messages=messages, max_completion_tokens=3
        )
    assert (r.object, r.model, r.id[:9]) == ("chat.completion", "anything", "chatcmpl-")
    message = r.choices[0].message
    assert (message.role, message.content) == ("assistant", text(3))
    assert r.usage is not None and r.usage.completion_tokens == 3
    assert r.usage.prompt_tokens == count_tokens("be brief") + count_tokens("hello there")
    assert replica.stats().completed == 1


async def test_without_max_tokens_the_distribution_times_a_default_length(start: Start) -> None:
    replica, base = await start(service_ms=30.0)
    async with sdk(base) as client:
        r = await client.chat.completions.with_raw_response.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )
    body = json.loads(r.content)
    assert body["service_ms"] == 30.0  # the fixed distribution, not ttft + per-token
    assert body["choices"][0]["message"]["content"] == text(DEFAULT_TOKENS)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["replica"] == replica.address


@pytest.mark.parametrize("max_tokens", [1, 7, 40])
async def test_streamed_chat_has_one_chunk_per_token_and_usage(
    start: Start, max_tokens: int
) -> None:
    replica, base = await start(ttft_ms=2.0, per_token_ms=0.5)
    async with sdk(base) as client:
        stream = await client.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]

    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"m1"}
    role, *content, finish, usage = chunks
    assert role.choices[0].delta.role == "assistant" and not role.choices[0].delta.content
    assert len(content) == max_tokens  # one chunk per token
    assert "".join(c.choices[0].delta.content or "" for c in content) == text(max_tokens)
    assert all(c.choices[0].finish_reason is None for c in [role, *content])
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == max_tokens
    assert usage.usage.prompt_tokens == count_tokens("count")
    assert all(c.usage is None for c in chunks[:-1])
    s = replica.stats()
    assert (s.completed, s.cancelled, s.in_flight) == (1, 0, 0)


async def test_streamed_chat_without_include_usage_has_no_usage_chunk(start: Start) -> None:
    _, base = await start()
    async with sdk(base) as client:
        stream = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "x"}], max_tokens=4, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1 + 4 + 1
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_streamed_completion(start: Start) -> None:
    _, base = await start()
    async with sdk(base) as client:
        stream = await client.completions.create(
            model="m1",
            prompt=["one", "two"],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    *content, finish, usage = chunks
    assert {c.object for c in chunks} == {"text_completion"}
    assert len(content) == 6 and "".join(c.choices[0].text for c in content) == text(6)
    assert finish.choices[0].finish_reason == "length" and finish.choices[0].text == ""
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (2, 6)


async def test_sim_headers_still_override_a_streamed_request(start: Start) -> None:
    """``x-sim-stream-chunks`` streams exactly N events, even without ``stream: true``."""
    _, base = await start()
    async with sdk(base) as client:
        stream = await client.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            extra_headers={"x-sim-stream-chunks": "3", "x-sim-service-ms": "30"},
        )
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text(3)
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "stop"]


async def test_embeddings(start: Start) -> None:
    replica, base = await start()
    async with sdk(base) as client:
        one = await client.embeddings.create(model="e5", input="hello")  # SDK asks for base64
        many = await client.embeddings.create(
            model="e5", input=["hello", "world"], encoding_format="float"
        )
        wide = await client.embeddings.create(model="e5", input=[[1, 2, 3]], dimensions=40)

    assert (one.object, one.model, len(one.data)) == ("list", "e5", 1)
    assert one.data[0].embedding == pytest.approx(embedding("hello"), abs=1e-6)
    assert len(one.data[0].embedding) == 16
    assert [d.index for d in many.data] == [0, 1]
    assert many.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-6)
    assert many.data[1].embedding != many.data[0].embedding
    tokens = count_tokens("hello") + count_tokens("world")
    assert many.usage.prompt_tokens == many.usage.total_tokens == tokens
    assert len(wide.data[0].embedding) == 40 and wide.usage.prompt_tokens == 3
    assert replica.stats().completed == 3


async def test_models_list_takes_no_slot(start: Start) -> None:
    replica, base = await start(slots=1)
    async with sdk(base) as client:
        stream = await client.chat.completions.create(
            model="m1", messages=[], stream=True, extra_headers={"x-sim-service-ms": "60000"}
        )
        first = await anext(aiter(stream))  # the role chunk: the only slot is now taken
        assert first.choices[0].delta.role == "assistant"
        assert replica.stats().in_flight == 1

        models = [m.id async for m in client.models.list()]

        assert models == ["m1", "m2"]
        s = replica.stats()
        assert (s.in_flight, s.received, s.received_while_full) == (1, 1, 0)
        await stream.close()
    await wait_for(lambda: replica.stats().in_flight == 0, what="slot freed")


async def test_slot_is_held_for_the_whole_stream_and_freed_before_it_ends(
    start: Start, session: aiohttp.ClientSession
) -> None:
    # Long enough that the check made after the role chunk always lands mid-stream.
    replica, base = await start(slots=1, ttft_ms=0.0, per_token_ms=1000.0)
    body = {"model": "m1", "max_tokens": 2, "stream": True}
    busy_seen = finish_seen = False
    async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[len(b"data: ") :])
            if chunk["choices"][0]["finish_reason"] is not None:
                # The last token was generated: the slot is free before the stream ends.
                assert replica.stats().in_flight == 0
                finish_seen = True
            elif not busy_seen:
                assert replica.stats().in_flight == 1
                async with session.post(f"{base}/v1/completions", json={}) as refused:
                    assert refused.status == 503
                busy_seen = True
    assert busy_seen and finish_seen
    s = replica.stats()
    assert (s.received, s.received_while_full, s.completed, s.in_flight) == (2, 1, 1, 0)
    assert accounted(replica)


async def test_client_leaving_mid_stream_cancels_and_frees_the_slot(start: Start) -> None:
    replica, base = await start(slots=1, per_token_ms=1000.0)
    async with sdk(base) as client:
        stream = await client.chat.completions.create(
            model="m1", messages=[], max_tokens=1000, stream=True
        )
        async for _ in stream:
            break  # the role chunk, then the client goes away
        await stream.close()

    await wait_for(lambda: replica.stats().in_flight == 0, timeout=5.0, what="slot freed")
    s = replica.stats()
    assert (s.cancelled, s.completed) == (1, 0)
    assert accounted(replica)
    async with sdk(base) as client:  # the slot is usable again
        r = await client.completions.create(model="m1", prompt="x", max_tokens=1)
    assert r.choices[0].text == text(1)


async def test_cancelled_while_waiting_for_a_json_answer(start: Start) -> None:
    replica, base = await start(slots=1, per_token_ms=1000.0)
    async with sdk(base) as client:
        call = asyncio.create_task(
            client.completions.create(model="m1", prompt="x", max_tokens=1000)
        )
        await wait_for(lambda: replica.stats().in_flight == 1, what="request in its slot")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await wait_for(lambda: replica.stats().in_flight == 0, timeout=5.0, what="slot freed")
    assert replica.stats().cancelled == 1 and accounted(replica)


@pytest.mark.parametrize(
    ("path", "data", "code"),
    [
        ("/v1/chat/completions", b"{not json", "invalid_json"),
        ("/v1/completions", b'["a list"]', "invalid_body"),
        ("/v1/completions", b"\xff\xfe", "invalid_json"),
        ("/v1/embeddings", b'{"input": 5}', "invalid_value"),
        ("/v1/chat/completions", b'{"stream": "yes"}', "invalid_value"),
        ("/v1/chat/completions", b'{"messages": "hi"}', "invalid_value"),
        ("/v1/completions", b'{"max_tokens": 0}', "invalid_value"),
        ("/v1/completions", b'{"model": 7}', "invalid_value"),
    ],
)
async def test_bad_body_is_an_openai_400_and_takes_no_slot(
    start: Start, session: aiohttp.ClientSession, path: str, data: bytes, code: str
) -> None:
    replica, base = await start()
    headers = {"content-type": "application/json"}
    async with session.post(base + path, data=data, headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert error["message"]
    s = replica.stats()
    assert (s.received, s.in_flight, s.max_in_flight) == (0, 0, 0)
    assert replica.received()[-1].body_bytes == len(data)  # recorded all the same


async def test_sdk_sees_a_bad_request_error(start: Start) -> None:
    _, base = await start()
    async with sdk(base) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="m1", messages=[], max_tokens=-1)
    assert caught.value.code == "invalid_value" and caught.value.param == "max_tokens"


async def test_received_bodies_and_headers_are_recorded(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start()
    prompt = "x" * (1024 * 1024)
    big = json.dumps({"model": "m1", "prompt": prompt, "max_tokens": 1}).encode()
    headers = {
        "x-gateway-destination-endpoint": "10.0.0.1:8000",
        "x-request-id": "big-1",
        "authorization": "Bearer sk-secret",
    }
    upload = io.BytesIO(big)  # raw bytes this large would make aiohttp warn
    async with session.post(f"{base}/v1/completions", data=upload, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["usage"]["prompt_tokens"] == count_tokens(prompt)
    async with session.post(f"{base}/v1/completions", json={"prompt": "small"}) as resp:
        assert resp.status == 200

    async with session.get(f"{base}/received") as resp:
        entries = (await resp.json())["requests"]
    large, small = entries[-2:]
    assert large["body_sha256"] == hashlib.sha256(big).hexdigest()
    assert large["body_bytes"] == len(big) and large["body"] is None  # too big to keep
    assert large["request_id"] == "big-1" and large["path"] == "/v1/completions"
    assert large["headers"]["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert large["headers"]["authorization"] == "[redacted]"
    assert "x-gateway-destination-endpoint" not in small["headers"]
    assert json.loads(small["body"]) == {"prompt": "small"}
    assert small["seq"] == large["seq"] + 1
    assert replica.received()[-1].body == small["body"].encode()


async def test_received_is_bounded_and_reset(start: Start, session: aiohttp.ClientSession) -> None:
    replica, base = await start()
    for i in range(70):
        async with session.get(f"{base}/v1/models", headers={"x-request-id": f"r{i}"}) as resp:
            assert resp.status == 200
    entries = replica.received()
    assert len(entries) == 64
    assert [e.request_id for e in entries] == [f"r{i}" for i in range(6, 70)]
    async with session.post(f"{base}/admin/reset") as resp:
        assert resp.status == 200
    assert replica.received() == ()
