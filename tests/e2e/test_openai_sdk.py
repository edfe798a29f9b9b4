"""The official ``openai`` SDK, unmodified, against the real stack (real Envoy).

The SDK sends the model only in the JSON body and no warmroute header; every assertion is
on what the SDK parsed and on what the simulated replicas actually received.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess

import openai
import pytest

from tests.e2e.stack import MODEL, Stack, StackFactory, client
from tests.helpers import wait_for


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    s = await stack_factory(replicas=2, slots=1, service_ms=20, max_waiting=100)
    await s.wait_warm()
    return s


def _sdk(stack: Stack) -> openai.AsyncOpenAI:
    # No retries: a 429 or 503 must reach the test as the SDK's typed error.
    return openai.AsyncOpenAI(
        base_url=stack.url + "/v1", api_key="sk-test", max_retries=0, timeout=30
    )


def _received(stack: Stack) -> int:
    return sum(r.stats().received for r in stack.replicas)


async def test_completions_chat_embeddings_and_models(stack: Stack) -> None:
    async with _sdk(stack) as sdk:
        comp = await sdk.completions.create(model=MODEL, prompt="Say hi", max_tokens=4)
        assert comp.model == MODEL and comp.choices[0].text
        assert comp.usage is not None and comp.usage.completion_tokens == 4

        chat = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=3
        )
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.completion_tokens == 3

        emb = await sdk.embeddings.create(model=MODEL, input=["a", "b", "c"])
        assert [d.index for d in emb.data] == [0, 1, 2]
        assert all(len(d.embedding) > 0 for d in emb.data)

        models = await sdk.models.list()
        assert [m.id for m in models.data] == [MODEL]
        one = await sdk.models.retrieve(MODEL)
        assert one.id == MODEL
    await stack.wait_idle()
    # Three inference calls reached replicas; the two model queries did not.
    assert _received(stack) == 3
    assert stack.metric("warmroute_leases_granted_total") == 3
    assert stack.metric("warmroute_upstream_mismatch_total") == 0
    for r in stack.replicas:
        for got in r.received():
            assert "x-gateway-destination-endpoint" not in got.headers


async def test_streamed_chat_reassembles_with_usage(stack: Stack) -> None:
    async with _sdk(stack) as sdk:
        stream = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count"}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        usage = None
        finish = None
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        text = "".join(parts)
        assert text and finish is not None
        assert usage is not None and usage.completion_tokens == 12

        # Without include_usage: no usage chunk at all.
        plain = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True
        )
        assert all([c.usage is None async for c in plain])
    await stack.wait_idle()
    assert stack.full_hits() == 0


async def test_forty_concurrent_async_calls_never_overload(stack: Stack) -> None:
    async with _sdk(stack) as sdk:

        async def call(i: int) -> str:
            r = await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=2
            )
            return r.choices[0].message.content or ""

        answers = await asyncio.gather(*(call(i) for i in range(40)))
    await stack.wait_idle()
    assert all(answers)
    assert _received(stack) == 40
    assert stack.full_hits() == 0
    assert max(r.stats().max_in_flight for r in stack.replicas) == 1
    assert stack.metric("warmroute_upstream_mismatch_total") == 0


async def test_cancelling_a_stream_frees_the_slot_at_once(stack: Stack) -> None:
    async with _sdk(stack) as sdk:
        # 2,000 tokens at 5 ms each: 10 s if nobody cancels.
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "long"}], max_tokens=2000,
            stream=True,
        )  # fmt: skip
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.close()
        # The lease and the replica's slot are both free long before the 10 s generation.
        await wait_for(lambda: stack.plane.registry.view().leases == 0, 5, what="lease freed")
        await wait_for(
            lambda: sum(r.stats().in_flight for r in stack.replicas) == 0, 5, what="slot freed"
        )
    assert sum(r.stats().cancelled for r in stack.replicas) == 1
    assert stack.metric("warmroute_requests_total", outcome="client_disconnect") == 1


async def test_unknown_model_is_not_found(stack: Stack) -> None:
    async with _sdk(stack) as sdk:
        with pytest.raises(openai.NotFoundError) as info:
            await sdk.chat.completions.create(
                model="gpt-unknown", messages=[{"role": "user", "content": "x"}]
            )
    assert info.value.status_code == 404
    assert "unknown_model" in str(info.value.body)
    assert _received(stack) == 0


async def test_queue_full_is_a_rate_limit_error(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1, slots=1, max_waiting=0)
    await stack.wait_warm()
    async with _sdk(stack) as sdk:
        hold = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2000,
            stream=True,
        )  # fmt: skip
        await wait_for(lambda: stack.plane.registry.view().leases == 1, 5, what="held")
        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "y"}]
            )
        assert info.value.status_code == 429
        assert info.value.response.headers.get("retry-after")
        await hold.close()
    await stack.wait_idle()
    assert stack.full_hits() == 0
    assert _received(stack) == 1


async def test_a_one_megabyte_prompt_arrives_byte_identical(stack: Stack) -> None:
    prompt = "".join(chr(0x41 + (i * 7919) % 26) for i in range(1_000_000))
    body = json.dumps(
        {"messages": [{"role": "user", "content": prompt}], "model": MODEL, "max_tokens": 1}
    ).encode()
    async with (
        client() as http,
        http.post(
            stack.url + "/v1/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        ) as r,
    ):
        assert r.status == 200
        answer = await r.json()
    got = [x for rep in stack.replicas for x in rep.received()]
    assert len(got) == 1
    assert got[0].body_bytes == len(body)
    assert got[0].body_sha256 == hashlib.sha256(body).hexdigest()
    assert answer["model"] == MODEL


async def test_curl_exactly_as_openais_docs_show_it(stack: Stack) -> None:
    assert shutil.which("curl"), "scripts/setup.sh installs curl"
    body = '{"model": "sim-model", "messages": [{"role": "user", "content": "Hello!"}]}'
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", stack.url + "/v1/chat/completions",
        "-H", "Content-Type: application/json",
        "-H", "Authorization: Bearer sk-test",
        "-d", body,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    answer = json.loads(out)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    assert _received(stack) == 1
    (got,) = [x for rep in stack.replicas for x in rep.received()]
    assert got.headers["authorization"] == "[redacted]"
