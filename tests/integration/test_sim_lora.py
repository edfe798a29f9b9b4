"""The simulated replica serves LoRA adapters as vLLM does: a real server, a real client.

What each test imitates is vLLM 0.32's behaviour (``warmroute/sim/lora.py`` cites where in
vLLM); the metric names and labels are also compared with a real vLLM's recorded answer in
``tests/integration/test_sim_vllm_fixtures.py``. Synchronisation is a polled condition with
a deadline (``wait_for``), never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for
from warmroute.sim import ServiceTime, SimReplica
from warmroute.sim.__main__ import add_arguments, build
from warmroute.sim.lora import LoraConfig, LoraModule
from warmroute.sim.service_time import TokenTiming

Start = Callable[..., Awaitable[tuple[SimReplica, str]]]
BASE = "base"


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start LoRA replicas on free ports, warm at once; ``(replica, base_url)``."""
    started: list[SimReplica] = []

    async def _start(
        slots: int = 4,
        modules: tuple[str, ...] = ("a", "b"),
        runtime: bool = True,
        load_ms: float = 200.0,
        path_exists: Callable[[str], bool] | None = None,
        **config: Any,
    ) -> tuple[SimReplica, str]:
        lora = LoraConfig(
            modules=tuple(LoraModule(m, f"/loras/{m}") for m in modules),
            runtime_updating=runtime,
            load_s=load_ms / 1000,
            **config,
        )
        replica = SimReplica(
            slots, 0.0, ServiceTime("fixed", 20), 1, [BASE], TokenTiming(5, 1),
            lora=lora, lora_path_exists=path_exists,
        )  # fmt: skip
        started.append(replica)
        port = await replica.start("127.0.0.1", 0)
        await wait_for(lambda: replica.stats().warm, what="replica warm")
        return replica, f"http://127.0.0.1:{port}"

    yield _start
    for replica in started:
        await replica.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, **kwargs: Any
) -> tuple[int, str, Any]:
    """Status, content type and the body (JSON if it is JSON, else text)."""
    async with session.post(url, json=body, **kwargs) as resp:
        text = await resp.text()
        kind = resp.content_type
        return resp.status, kind, (await resp.json()) if kind == "application/json" else text


def chat(model: str, tokens: int = 2) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}


async def metrics(session: aiohttp.ClientSession, base: str) -> dict[str, list[Any]]:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_the_load_endpoints_are_off_unless_allowed(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(runtime=False)
    load = {"lora_name": "c", "lora_path": "/loras/c"}
    assert await post(session, f"{base}/v1/load_lora_adapter", load) == (
        404, "application/json", {"detail": "Not Found"}
    )  # fmt: skip
    assert await post(session, f"{base}/v1/unload_lora_adapter", {"lora_name": "a"}) == (
        404, "application/json", {"detail": "Not Found"}
    )  # fmt: skip
    assert replica.stats().received == 0  # not inference


async def test_without_lora_the_endpoints_are_off_and_any_model_is_served(
    session: aiohttp.ClientSession,
) -> None:
    replica = SimReplica(1, 0.0, ServiceTime("fixed", 5), 1, BASE)
    port = await replica.start("127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_for(lambda: replica.stats().warm, what="warm")
        status, _, _ = await post(session, f"{base}/v1/load_lora_adapter", {"lora_name": "x"})
        assert status == 404
        status, _, answer = await post(session, f"{base}/v1/chat/completions", chat("other"))
        assert status == 200 and answer["model"] == "other"
        async with session.get(f"{base}/metrics") as resp:
            assert "vllm:lora_requests_info" not in await resp.text()
    finally:
        await replica.stop()


async def test_load_takes_its_time_then_the_adapter_is_listed_and_served(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(load_ms=300.0, max_loras=2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, kind, text = await post(
        session, f"{base}/v1/load_lora_adapter", {"lora_name": "c", "lora_path": "/loras/c"}
    )
    assert loop.time() - began >= 0.3  # answered once loaded, as vLLM's add_lora
    assert (status, kind, text) == (
        200,
        "text/plain",
        "Success: LoRA adapter 'c' added successfully.",
    )
    async with session.get(f"{base}/v1/models") as resp:
        listed = (await resp.json())["data"]
    assert [(m["id"], m["parent"], m["root"]) for m in listed] == [
        (BASE, None, BASE), ("a", BASE, "/loras/a"), ("b", BASE, "/loras/b"),
        ("c", BASE, "/loras/c"),
    ]  # fmt: skip
    status, _, answer = await post(session, f"{base}/v1/chat/completions", chat("c"))
    assert status == 200 and answer["model"] == "c"
    assert replica.stats().lora_loads == 1  # the load endpoint's; c was resident after it

    status, kind, text = await post(session, f"{base}/v1/unload_lora_adapter", {"lora_name": "c"})
    assert (status, text) == (200, "Success: LoRA adapter 'c' removed successfully.")
    status, _, answer = await post(session, f"{base}/v1/chat/completions", chat("c"))
    assert status == 404 and answer["error"]["type"] == "NotFoundError"


async def test_endpoint_refusals_have_vllms_statuses_and_bodies(
    start: Start, session: aiohttp.ClientSession
) -> None:
    _, base = await start(path_exists=lambda p: Path(p).name != "gone")
    load, unload = f"{base}/v1/load_lora_adapter", f"{base}/v1/unload_lora_adapter"

    async def error(url: str, body: Any, **kwargs: Any) -> tuple[int, str, str | None, str]:
        status, kind, answer = await post(session, url, body, **kwargs)
        assert kind == "application/json" and answer["error"]["code"] == status
        e = answer["error"]
        return status, e["type"], e["param"], e["message"]

    assert await error(load, {"lora_name": "a", "lora_path": "/x"}) == (
        400, "InvalidUserInput", None,
        "The lora adapter 'a' has already been loaded. If you want to load the adapter in "
        "place, set 'load_inplace' to True.",
    )  # fmt: skip
    assert await error(load, {"lora_name": "", "lora_path": "/x"}) == (
        400, "InvalidUserInput", None, "Both 'lora_name' and 'lora_path' must be provided."
    )  # fmt: skip
    assert await error(load, {"lora_name": BASE, "lora_path": "/x"}) == (
        400, "InvalidUserInput", None,
        f"The lora adapter '{BASE}' conflicts with a served base model.",
    )  # fmt: skip
    assert await error(load, {"lora_name": "g", "lora_path": "/loras/gone"}) == (
        404, "NotFoundError", None, "Loading lora g failed: No adapter found for /loras/gone"
    )  # fmt: skip
    status, type_, param, message = await error(load, {"lora_name": "g"})
    assert (status, type_, param) == (400, "Bad Request", "body.lora_path")
    assert message.startswith("1 validation error:\n") and "Field required" in message
    status, type_, param, message = await error(load, {"lora_name": 5, "lora_path": "/x"})
    assert (status, type_, param) == (400, "Bad Request", "body.lora_name")
    status, type_, param, message = await error(
        load, None, data="x=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert (status, type_) == (400, "Bad Request") and "Unsupported Media Type" in message
    assert await error(unload, {"lora_name": "zz"}) == (
        404, "NotFoundError", None, "The lora adapter 'zz' cannot be found."
    )  # fmt: skip
    assert await error(unload, {"lora_name": ""}) == (
        400, "InvalidUserInput", None,
        "'lora_name' needs to be provided to unload a LoRA adapter.",
    )  # fmt: skip
    # In place: allowed, and takes a load.
    status, _, _ = await post(
        session, load, {"lora_name": "a", "lora_path": "/y", "load_inplace": True}
    )
    assert status == 200


async def test_a_request_for_an_unknown_model_is_refused_404_as_vllm(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start()
    status, _, answer = await post(session, f"{base}/v1/chat/completions", chat("nope"))
    assert status == 404
    assert answer == {
        "error": {
            "message": f"The model `nope` does not exist. Valid aliases: {BASE}.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    # The Messages API answers it in Anthropic's shape (vLLM's translation).
    body = {"model": "nope", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    status, _, answer = await post(session, f"{base}/v1/messages", body)
    assert status == 404 and answer["type"] == "error"
    assert answer["error"]["type"] == "NotFoundError"
    # The SDK's typed error, as from a real vLLM.
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError):
            await sdk.completions.create(model="nope", prompt="x", max_tokens=1)
    s = replica.stats()
    assert s.unknown_model == 3 and s.received == 0


async def test_beyond_max_loras_requests_wait_and_the_metrics_say_so(
    start: Start, session: aiohttp.ClientSession
) -> None:
    # 1 adapter in the batch; each request runs ~1 s unless cut by a test header.
    replica, base = await start(slots=4, max_loras=1, max_cpu_loras=2)
    url = f"{base}/v1/chat/completions"
    slow = {"x-sim-service-ms": "1000"}
    a1 = asyncio.create_task(post(session, url, chat("a"), headers=slow))
    await wait_for(lambda: replica.lora is not None and replica.lora.running_adapters() == ("a",))
    b1 = asyncio.create_task(post(session, url, chat("b"), headers={"x-sim-service-ms": "10"}))
    a2 = asyncio.create_task(post(session, url, chat("a"), headers={"x-sim-service-ms": "10"}))
    assert replica.lora is not None
    book = replica.lora
    await wait_for(lambda: book.waiting == 1, what="b waits")
    await wait_for(a2.done, what="a's second request ran past the waiting b")
    assert not b1.done()

    got = await metrics(session, base)
    newest = max(got["vllm:lora_requests_info"], key=lambda x: x.value)
    # vLLM 0.32 lists the adapters *running* in both labels; b waits unseen there.
    running = {"running_lora_adapters": "a", "waiting_lora_adapters": "a"}
    assert newest.labels == {"max_lora": "1", **running}
    labels = {"engine": "0", "model_name": BASE}
    (waiting,) = got["vllm:num_requests_waiting"]
    (running_now,) = got["vllm:num_requests_running"]
    assert (waiting.labels, waiting.value) == (labels, 1)
    assert (running_now.labels, running_now.value) == (labels, 1)
    by_reason = {s.labels["reason"]: s.value for s in got["vllm:num_requests_waiting_by_reason"]}
    assert by_reason == {"capacity": 0, "deferred": 1}

    assert (await a1)[0] == 200 and (await b1)[0] == 200
    s = replica.stats()
    assert s.lora_waited == 1 and s.max_in_flight == 3 and s.received_while_full == 0
    got = await metrics(session, base)
    newest = max(got["vllm:lora_requests_info"], key=lambda x: x.value)
    assert newest.labels == {
        "max_lora": "1",
        "running_lora_adapters": "",
        "waiting_lora_adapters": "",
    }
    # Every label set seen is still there (vLLM's gauge keeps them), each a Unix time.
    seen = {
        (x.labels["running_lora_adapters"], x.labels["waiting_lora_adapters"])
        for x in got["vllm:lora_requests_info"]
    }
    assert seen == {("a", "a"), ("b", "b"), ("", "")}
    assert all(x.value > 1.7e9 for x in got["vllm:lora_requests_info"])


async def test_a_waiting_request_whose_client_leaves_frees_its_slot(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(slots=2, max_loras=1)
    url = f"{base}/v1/chat/completions"
    a1 = asyncio.create_task(post(session, url, chat("a"), headers={"x-sim-service-ms": "5000"}))
    await wait_for(lambda: replica.stats().in_flight == 1)
    b1 = asyncio.create_task(post(session, url, chat("b")))
    await wait_for(lambda: replica.lora is not None and replica.lora.waiting == 1)
    b1.cancel()
    await wait_for(lambda: replica.stats().in_flight == 1, what="the waiting slot freed")
    assert replica.lora is not None and replica.lora.waiting_adapters() == ()
    a1.cancel()
    await wait_for(lambda: replica.stats().in_flight == 0)
    assert replica.stats().cancelled == 2


async def test_an_evicted_adapter_costs_its_load_time_again(
    start: Start, session: aiohttp.ClientSession
) -> None:
    # Cache of 1 (max_loras 1): b was loaded last, so a is not resident.
    replica, base = await start(slots=1, max_loras=1, load_ms=300.0)
    assert replica.lora is not None and replica.lora.resident() == ("b",)
    loop = asyncio.get_running_loop()
    url = f"{base}/v1/chat/completions"
    began = loop.time()
    status, _, _ = await post(session, url, chat("a", tokens=1))
    assert status == 200 and loop.time() - began >= 0.3
    assert replica.stats().lora_loads == 1 and replica.lora.resident() == ("a",)
    began = loop.time()
    status, _, _ = await post(session, url, chat("a", tokens=1))
    assert status == 200 and replica.stats().lora_loads == 1  # resident now: no load


def test_the_cli_builds_the_same_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--model", "tiny", "--enable-lora", "--max-loras", "2", "--lora-modules",
         "x=/l/x", '{"name": "y", "path": "/l/y"}', "--lora-load-ms", "50"]
    )  # fmt: skip
    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    replica = build(args)
    assert replica.lora is not None
    assert replica.lora.known() == {"x": "/l/x", "y": "/l/y"}
    assert replica.lora.config.max_loras == 2 and replica.lora.config.load_s == 0.05
    assert not replica.lora.config.runtime_updating
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    again = build(args)
    assert again.lora is not None and again.lora.config.runtime_updating
    with pytest.raises(ValueError, match="--enable-lora"):
        build(parser.parse_args(["--lora-modules", "x=/l/x"]))
