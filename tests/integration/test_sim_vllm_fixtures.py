"""The simulated replica against a real vLLM's recorded answers: ``tests/fixtures/vllm/lora``
(recorded for these tests) and ``tests/fixtures/vllm`` (recorded on branch h-vllm for the
signal parser, independently; its README says how), each replayed against a sim set up as
the recorded server was.

The recording (``record.py`` there, vLLM 0.32.0 CPU build, the tiny model of DESIGN.md fact
18, ``--enable-lora --max-loras 2 --max-num-seqs 4 --lora-modules adapter-0=...`` and runtime
LoRA updating on) is replayed against a sim configured the same way, and compared:

* ``/metrics``: every ``vllm:*`` family the sim exports exists in vLLM's with the same type,
  help text and label keys; after the same traffic (three adapters asked for, ``max_loras``
  2), the same running/waiting counts and the same newest ``vllm:lora_requests_info`` labels;
* the load/unload endpoints and the unknown-model refusals: the same status and body;
* ``/v1/models``, ``/v1/responses`` and ``/v1/messages``: the same fields (key sets) and, for
  streams, the same event types in the same order.

Differences kept on purpose, stated here so a test does not hide them: the load endpoint's
success has no Content-Type in vLLM (aiohttp always sends one: ``text/plain`` here); the
generated text, ids and times differ; the sim lists a base model's ``root`` as its name and
adds ``replica``, ``request_id`` and ``service_ms`` to a non-streamed answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for
from warmroute.sim import ServiceTime, SimReplica
from warmroute.sim.lora import LoraConfig, LoraModule
from warmroute.sim.service_time import TokenTiming

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm" / "lora"
MODEL = "tiny"


def recorded(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimReplica, str]]:
    """A sim set up as the recorded vLLM was: same model, adapter, max_loras and seats."""
    models = recorded("models_start")["body"]["data"]
    adapter = next(m for m in models if m["parent"] == MODEL)
    lora = LoraConfig(
        max_loras=2,
        load_s=0.05,
        modules=(LoraModule(adapter["id"], adapter["root"]),),
        runtime_updating=True,
    )
    replica = SimReplica(
        4, 0.0, ServiceTime("fixed", 20.0), 1, [MODEL], TokenTiming(5, 1), lora=lora,
        lora_path_exists=lambda path: Path(path).name.startswith("adapter-"),
    )  # fmt: skip
    port = await replica.start("127.0.0.1", 0)
    await wait_for(lambda: replica.stats().warm, what="warm")
    yield replica, f"http://127.0.0.1:{port}"
    await replica.stop()


async def replay(http: aiohttp.ClientSession, base: str, name: str) -> tuple[int, str, Any]:
    """Send the recorded request ``name`` to the sim: status, content type, body."""
    request = recorded(name)["request"]
    body = request["body"]
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs["json"] = body
    elif name == "load_form":
        kwargs = {"data": b"lora_name=x",
                  "headers": {"content-type": "application/x-www-form-urlencoded"}}  # fmt: skip
    async with http.request(request["method"], base + request["path"], **kwargs) as resp:
        text = await resp.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, resp.content_type, parsed


SIM_VLLM_FAMILIES = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
}


def label_keys(family: Any) -> set[frozenset[str]]:
    return {frozenset(s.labels) for s in family.samples}


async def test_metric_names_types_help_and_label_keys_match_vllm(
    sim: tuple[SimReplica, str],
) -> None:
    _, base = sim
    real = families((FIXTURES / "metrics_busy.txt").read_text())
    async with aiohttp.ClientSession() as http:
        status, _, _ = await replay(http, base, "chat_adapter")  # one label set to compare
        assert status == 200
        async with http.get(f"{base}/metrics") as resp:
            mine = families(await resp.text())
    exported = {name for name in mine if name.startswith("vllm:")}
    assert exported == SIM_VLLM_FAMILIES
    for name in exported:
        assert name in real, f"{name} is not a vLLM 0.32 metric"
        assert mine[name].type == real[name].type, name
        assert mine[name].documentation == real[name].documentation, name
        assert label_keys(mine[name]) == label_keys(real[name]), name
    # The renamed cache gauge is gone from vLLM, and so from the sim.
    assert "vllm:gpu_cache_usage_perc" not in real and "vllm:gpu_cache_usage_perc" not in mine
    # Same label values where they are not the traffic's: the engine and the model.
    for name in exported - {"vllm:lora_requests_info"}:
        for sample in (*mine[name].samples, *real[name].samples):
            assert sample.labels["engine"] == "0" and sample.labels["model_name"] == MODEL


async def test_before_any_request_lora_requests_info_has_no_sample(
    sim: tuple[SimReplica, str],
) -> None:
    _, base = sim
    real = families((FIXTURES / "metrics_idle.txt").read_text())
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        mine = families(await resp.text())
    assert real["vllm:lora_requests_info"].samples == []
    assert mine["vllm:lora_requests_info"].samples == []


def newest(family: Any) -> dict[str, str]:
    labels: dict[str, str] = max(family.samples, key=lambda s: s.value).labels
    return labels


def value(fams: dict[str, Any], name: str, **labels: str) -> float:
    (sample,) = [s for s in fams[name].samples if labels.items() <= s.labels.items()]
    result: float = sample.value
    return result


async def test_three_adapters_over_max_loras_two_look_as_in_vllm(
    sim: tuple[SimReplica, str],
) -> None:
    """The recording's traffic: requests for adapter-0, -1, -2 and -0 again, long ones, with
    ``max_loras`` 2: adapter-2's waits, the second adapter-0 runs past it."""
    replica, base = sim
    busy_real = families((FIXTURES / "metrics_busy.txt").read_text())
    after_real = families((FIXTURES / "metrics_after.txt").read_text())
    book = replica.lora
    assert book is not None
    async with aiohttp.ClientSession() as http:
        for name in ("load_ok", "load_adapter_2"):  # the recording loaded them first
            assert (await replay(http, base, name))[0] == 200

        async def chat(adapter: str) -> int:
            body = {"model": adapter, "max_tokens": 400,
                    "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip
            async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
                await resp.read()
                return resp.status

        calls: list[asyncio.Task[int]] = []

        def all_inside() -> bool:
            return replica.stats().in_flight == len(calls)

        for adapter in ("adapter-0", "adapter-1", "adapter-2", "adapter-0"):
            calls.append(asyncio.create_task(chat(adapter)))
            await wait_for(all_inside, what=f"{adapter}'s request inside")
        async with http.get(f"{base}/metrics") as resp:
            busy = families(await resp.text())
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            assert value(busy, name) == value(busy_real, name), name
        for reason in ("capacity", "deferred"):
            name = "vllm:num_requests_waiting_by_reason"
            assert value(busy, name, reason=reason) == value(busy_real, name, reason=reason)
        info = "vllm:lora_requests_info"
        assert newest(busy[info]) == newest(busy_real[info])
        assert await asyncio.gather(*calls) == [200] * 4
        async with http.get(f"{base}/metrics") as resp:
            after = families(await resp.text())
    assert newest(after[info]) == newest(after_real[info])
    # In both, every label set lists the same adapters as running and as waiting. (Which
    # sets appear in between differs: vLLM's batch steps in lockstep, so the three long
    # requests ended in one step; the sim's end one by one.)
    for fams in (after, after_real):
        for sample in fams[info].samples:
            assert sample.labels["running_lora_adapters"] == sample.labels["waiting_lora_adapters"]


EXCHANGES = [
    "load_ok",
    "load_again",
    "load_base_name",
    "load_empty_name",
    "load_missing_path_field",
    "load_missing_dir",
    "load_form",
    "load_adapter_2",
    "unload_unknown",
    "chat_unknown_model",
    "messages_unknown_model",
    "unload_ok",
]


async def test_endpoint_answers_match_vllms_status_and_body(sim: tuple[SimReplica, str]) -> None:
    _, base = sim
    async with aiohttp.ClientSession() as http:
        for name in EXCHANGES:  # in the recording's order: later answers depend on earlier
            real = recorded(name)
            status, content_type, body = await replay(http, base, name)
            assert (status, body) == (real["status"], real["body"]), name
            if real["content_type"]:
                assert content_type == real["content_type"], name
            else:  # vLLM sends none on success; aiohttp always sends one
                assert content_type == "text/plain", name


SIM_EXTRAS = {"replica", "request_id", "service_ms"}
"""What the sim adds to every non-streamed answer (documented in ``warmroute.sim``)."""


async def test_with_runtime_updating_off_the_endpoints_answer_as_vllm() -> None:
    """Recorded from a vLLM started without ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``."""
    lora = LoraConfig(modules=(LoraModule("adapter-0", "/loras/adapter-0"),))
    off = SimReplica(1, 0.0, ServiceTime("fixed", 5.0), 1, [MODEL], lora=lora)
    port = await off.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            for name in ("load_disabled", "unload_disabled"):
                real = recorded(name)
                status, content_type, body = await replay(http, f"http://127.0.0.1:{port}", name)
                assert (status, content_type, body) == (
                    real["status"],
                    real["content_type"],
                    real["body"],
                ), name
    finally:
        await off.stop()


def shape(value: Any) -> Any:
    """The keys of every object in ``value``, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


async def test_models_responses_and_messages_have_vllms_fields(
    sim: tuple[SimReplica, str],
) -> None:
    _, base = sim
    async with aiohttp.ClientSession() as http:
        for name in ("models_start", "responses", "messages"):
            status, _, body = await replay(http, base, name)
            real = recorded(name)
            assert status == real["status"] == 200
            if name != "models_start":
                assert body.keys() >= SIM_EXTRAS
                body = {k: v for k, v in body.items() if k not in SIM_EXTRAS}
            assert shape(body) == shape(real["body"]), name
        # The model list: the same entries, adapters named after their parent.
        _, _, listed = await replay(http, base, "models_start")
        real_list = recorded("models_start")["body"]["data"]
        assert [(m["id"], m["parent"], m["owned_by"]) for m in listed["data"]] == [
            (m["id"], m["parent"], m["owned_by"]) for m in real_list
        ]
        assert listed["data"][1]["root"] == real_list[1]["root"]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event in ``text``."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def squeezed(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Event types in order, each run of repeats once (the number of deltas differs)."""
    kinds: list[str] = []
    for kind, data in events:
        assert data["type"] == kind
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    return kinds


@pytest.mark.parametrize("name", ["responses_stream", "messages_stream"])
async def test_streams_have_vllms_events_in_vllms_order(
    sim: tuple[SimReplica, str], name: str
) -> None:
    _, base = sim
    real = sse_events(recorded(name)["body"])
    async with aiohttp.ClientSession() as http:
        status, content_type, text = await replay(http, base, name)
    assert status == 200 and content_type == "text/event-stream"
    mine = sse_events(text)
    assert squeezed(mine) == squeezed(real)
    real_shapes = {kind: shape(data) for kind, data in real}
    for kind, data in mine:
        assert shape(data) == real_shapes[kind], kind


# -- the fixtures recorded for the signal parser (tests/fixtures/vllm/, README there) ------

SHARED = FIXTURES.parent


async def _shared_sim() -> tuple[SimReplica, str]:
    """A sim set up as the server of ``tests/fixtures/vllm/README.md``: ``a0`` and ``a1``
    from the start, ``max_loras`` 2, four seats, runtime updating on."""
    lora = LoraConfig(
        max_loras=2,
        load_s=0.05,
        modules=(
            LoraModule("a0", "/work/real-vllm/loras/adapter-0"),
            LoraModule("a1", "/work/real-vllm/loras/adapter-1"),
        ),
        runtime_updating=True,
    )
    replica = SimReplica(
        4, 0.0, ServiceTime("fixed", 20.0), 1, [MODEL], TokenTiming(5, 1), lora=lora,
        lora_path_exists=lambda path: Path(path).name.startswith("adapter-"),
    )  # fmt: skip
    port = await replica.start("127.0.0.1", 0)
    await wait_for(lambda: replica.stats().warm, what="warm")
    return replica, f"http://127.0.0.1:{port}"


async def test_the_parser_fixtures_families_and_label_keys_match() -> None:
    declared = dict(
        line.split() for line in (SHARED / "metric-families.txt").read_text().splitlines()
    )
    real = families((SHARED / "metrics-lora-deferred.txt").read_text())
    replica, base = await _shared_sim()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "a0", "prompt": "hi", "max_tokens": 2}
            async with http.post(f"{base}/v1/completions", json=body) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/metrics") as resp:
                mine = families(await resp.text())
    finally:
        await replica.stop()
    for name in SIM_VLLM_FAMILIES:
        assert declared[name] == mine[name].type, name
        assert label_keys(mine[name]) == label_keys(real[name]), name


async def test_the_parser_fixtures_lora_deferred_state_is_the_sims() -> None:
    """``metrics-lora-deferred.txt``: a2 loaded at run time, streams for a0, a1 and a2 on
    ``max_loras`` 2: two run, a2's waits, and the newest label set names a0,a1 twice."""
    real = families((SHARED / "metrics-lora-deferred.txt").read_text())
    replica, base = await _shared_sim()
    try:
        async with aiohttp.ClientSession() as http:
            load = {"lora_name": "a2", "lora_path": "/work/real-vllm/loras/adapter-2"}
            async with http.post(f"{base}/v1/load_lora_adapter", json=load) as resp:
                assert resp.status == 200
            calls: list[asyncio.Task[None]] = []

            async def stream(model: str) -> None:
                body = {"model": model, "prompt": "hi", "max_tokens": 900, "stream": True}
                async with http.post(f"{base}/v1/completions", json=body) as resp:
                    await resp.read()

            def all_inside() -> bool:
                return replica.stats().in_flight == len(calls)

            for model in ("a0", "a1", "a2"):
                calls.append(asyncio.create_task(stream(model)))
                await wait_for(all_inside, what=f"{model}'s stream inside")
            async with http.get(f"{base}/metrics") as resp:
                mine = families(await resp.text())
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await replica.stop()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert value(mine, name) == value(real, name), name
    for reason in ("capacity", "deferred"):
        name = "vllm:num_requests_waiting_by_reason"
        assert value(mine, name, reason=reason) == value(real, name, reason=reason), reason
    info = "vllm:lora_requests_info"
    assert newest(mine[info]) == newest(real[info])


async def test_the_parser_fixtures_endpoint_exchanges_replay_the_same() -> None:
    exchanges = json.loads((SHARED / "lora-endpoints.json").read_text())
    replica, base = await _shared_sim()
    try:
        async with aiohttp.ClientSession() as http:
            for name, real in exchanges.items():  # in order: later answers depend on earlier
                request = real["request"]
                url = base + request["path"]
                async with http.request(request["method"], url, json=request["json"]) as resp:
                    text = await resp.text()
                    body = json.loads(text) if resp.content_type == "application/json" else text
                    assert (resp.status, body) == (real["status"], real["body"]), name
                    expected_type = real["content_type"] or "text/plain"  # see module doc
                    assert resp.content_type == expected_type, name
    finally:
        await replica.stop()
