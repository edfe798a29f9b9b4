"""warmroute's readers against a live vLLM: its metrics (running, waiting, KV cache, LoRA)
while requests run, its model list while adapters come and go, and the recorded fixtures
(tests/fixtures/vllm) still true of the server installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.vllm.client import Streams, idle, session, signals, wait_signals
from tests.vllm.conftest import MAX_LORAS, SLOTS, Replicas
from warmroute.discovery.served_models import ServedModels, parse_served_models

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"
pytestmark = pytest.mark.timeout(600)  # the first test also waits for the replicas to start


async def served(http: aiohttp.ClientSession, url: str) -> ServedModels:
    async with http.get(url + "/v1/models") as r:
        r.raise_for_status()
        return parse_served_models(await r.json())


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with http.post(url, json=body) as r:
        await r.read()
        return r.status


def test_health_is_refused_then_200_never_503(replicas: Replicas) -> None:
    """What a warm probe sees while vLLM loads: no HTTP answer at all until it can serve."""
    for server in replicas.both:
        assert server.health_seen[-1] == 200
        assert set(server.health_seen) <= {None, 200}, server.health_seen


async def test_the_parser_reads_running_waiting_kv_and_adapters_while_requests_run(
    replicas: Replicas,
) -> None:
    b = replicas.b
    async with session() as http, Streams(http, b.url) as streams:
        s = await idle(http, b)
        assert (s.server, s.running, s.waiting) == ("vllm", 0, 0)
        # Three adapter streams: both adapters named, running (and, in vLLM 0.32, "waiting").
        streams.open(["a0", "a0", "a1"])
        s = await wait_signals(http, b, lambda s: s.running == 3, "3 running", streams=streams)
        assert s.lora is not None and s.lora.max_lora == MAX_LORAS
        assert s.lora.running_adapters == {"a0", "a1"}
        assert s.kv_cache_usage is not None and 0 < s.kv_cache_usage < 1
        # Three more on a base model: 4 sequences run, 2 wait; every open stream counted.
        streams.open(["tiny"] * 3)
        s = await wait_signals(
            http, b, lambda s: (s.running, s.waiting) == (SLOTS, 2), "4 running, 2 waiting",
            streams=streams,
        )  # fmt: skip
        assert s.in_flight == len(streams.tasks) == 6
        await streams.close()
        s = await wait_signals(
            http, b,
            lambda s: s.in_flight == 0 and s.lora is not None and not s.lora.busy_adapters,
            "idle, no adapter named",
        )  # fmt: skip
        assert s.kv_cache_usage == 0.0


async def test_a_request_waiting_for_a_lora_slot_is_counted_not_named(replicas: Replicas) -> None:
    b = replicas.b
    load = {"lora_name": "a2", "lora_path": str(replicas.loras / "adapter-2")}
    async with session() as http:
        await idle(http, b)
        assert await post(http, b.url + "/v1/load_lora_adapter", load) == 200
        try:
            async with Streams(http, b.url) as streams:
                streams.open(["a0", "a1", "a2"])  # three adapters, two LoRA slots
                s = await wait_signals(
                    http, b, lambda s: (s.running, s.waiting) == (2, 1), "2 running, 1 waiting",
                    streams=streams,
                )  # fmt: skip
                assert s.lora is not None
                # vLLM 0.32 names only the two adapters running: the waiting one's request
                # is known to its API server only once it runs (fixtures README).
                assert s.lora.busy_adapters is not None and len(s.lora.busy_adapters) == 2
            await idle(http, b)
        finally:
            await post(http, b.url + "/v1/unload_lora_adapter", {"lora_name": "a2"})


async def test_the_model_list_follows_adapters_loaded_and_unloaded(replicas: Replicas) -> None:
    a, b = replicas.both
    async with session() as http:
        assert (await served(http, a.url)).adapters == {"a0": "tiny"}
        assert (await served(http, b.url)).adapters == {"a0": "tiny", "a1": "tiny"}
        load = {"lora_name": "a3", "lora_path": str(replicas.loras / "adapter-3")}
        assert await post(http, a.url + "/v1/load_lora_adapter", load) == 200
        try:
            listed = await served(http, a.url)
            assert listed.adapters == {"a0": "tiny", "a3": "tiny"} and listed.bases == ("tiny",)
        finally:
            assert await post(http, a.url + "/v1/unload_lora_adapter", {"lora_name": "a3"}) == 200
        assert (await served(http, a.url)).ids == {"tiny", "a0"}


async def test_the_recorded_adapter_answers_are_what_this_vllm_answers(replicas: Replicas) -> None:
    """Replays tests/fixtures/vllm/lora-endpoints.json (recorded on a server like ``b``) and
    compares status, content type and the error's type, param and code (messages name
    paths)."""
    recorded: dict[str, Any] = json.loads((FIXTURES / "lora-endpoints.json").read_text())
    b = replicas.b
    async with session() as http:
        for name, ex in recorded.items():
            body = dict(ex["request"]["json"])
            if "lora_path" in body and Path(body["lora_path"]).name.startswith("adapter-"):
                body["lora_path"] = str(replicas.loras / Path(body["lora_path"]).name)
            async with http.request(ex["request"]["method"], b.url + ex["request"]["path"],
                                    json=body) as r:  # fmt: skip
                text = await r.text()
                got = (r.status, r.headers.get("content-type"))
            assert got == (ex["status"], ex["content_type"]), name
            if isinstance(ex["body"], dict):
                keys = ("type", "param", "code")
                error = json.loads(text)["error"]
                assert {k: error[k] for k in keys} == {k: ex["body"]["error"][k] for k in keys}
            else:
                assert text == ex["body"], name
        assert (await served(http, b.url)).ids == {"tiny", "a0", "a1"}  # a2 unloaded again
        assert (await signals(http, b)).in_flight == 0
