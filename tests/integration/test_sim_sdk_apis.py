"""The Responses API and Anthropic's Messages API on the simulated replica, read by the
official ``openai`` and ``anthropic`` SDKs (no Envoy: ``tests/e2e/test_sdk_apis.py`` goes
through it). Each answer must parse into the SDK's own types with every required field set
(before, the Anthropic SDK returned a message whose every field was None).

Synchronisation is a polled condition with a deadline (``wait_for``), never a sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from tests.helpers import wait_for
from warmroute.sim import ServiceTime, SimReplica
from warmroute.sim.openai_api import text
from warmroute.sim.service_time import TokenTiming


@pytest.fixture
async def replica() -> AsyncIterator[tuple[SimReplica, str]]:
    sim = SimReplica(2, 0.0, ServiceTime("fixed", 20.0), 1, ["m1"], TokenTiming(5, 1))
    port = await sim.start("127.0.0.1", 0)
    await wait_for(lambda: sim.stats().warm, what="warm")
    yield sim, f"http://127.0.0.1:{port}"
    await sim.stop()


async def test_responses_not_streamed(replica: tuple[SimReplica, str]) -> None:
    sim, base = replica
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as sdk:
        resp = await sdk.responses.create(model="m1", input="hello there", max_output_tokens=4)
        free = await sdk.responses.create(model="m1", input="hi")  # no limit: sampled length
    assert resp.status == "incomplete" and resp.output_text == text(4)
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (3, 4)
    assert free.status == "completed" and free.output_text
    assert sim.stats().completed == 2


async def test_responses_streamed(replica: tuple[SimReplica, str]) -> None:
    sim, base = replica
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as sdk:
        stream = await sdk.responses.create(
            model="m1", input="hello", max_output_tokens=6, stream=True
        )
        events = [e async for e in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == text(6)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "response.completed" and last.response.output_text == text(6)
    assert sim.stats().completed == 1


async def test_messages_not_streamed(replica: tuple[SimReplica, str]) -> None:
    sim, base = replica
    async with anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as sdk:
        msg = await sdk.messages.create(
            model="m1",
            max_tokens=3,
            system="be brief",
            messages=[{"role": "user", "content": "hello"}],
        )
    assert (msg.type, msg.role, msg.model, msg.stop_reason) == (
        "message", "assistant", "m1", "max_tokens"
    )  # fmt: skip
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].type == "text" and msg.content[0].text == text(3)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)
    assert sim.stats().completed == 1


async def test_messages_streamed_raw_and_with_the_helper(replica: tuple[SimReplica, str]) -> None:
    sim, base = replica
    async with anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as sdk:
        raw = await sdk.messages.create(
            model="m1", max_tokens=4, messages=[{"role": "user", "content": "x"}], stream=True
        )
        kinds = [e.type async for e in raw]  # the SDK drops the ping
        async with sdk.messages.stream(
            model="m1", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            streamed = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert kinds == [
        "message_start", "content_block_start", *["content_block_delta"] * 4,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert streamed == text(4) and final.content[0].type == "text"
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4
    assert sim.stats().completed == 2


async def test_a_refused_body_is_the_sdks_typed_error(replica: tuple[SimReplica, str]) -> None:
    sim, base = replica
    async with anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as sdk:
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk.messages.create(
                model="m1",
                max_tokens=0,  # below 1
                messages=[{"role": "user", "content": "x"}],
            )
    assert info.value.status_code == 400
    assert info.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": info.value.body["error"]["message"]},
    }
    assert sim.stats().received == 0  # refused before admission, not counted
