"""Integration tests for the simulated replica: a real server on localhost, a real HTTP client.

Synchronisation is always a polled condition with a deadline (``wait_for``), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import wait_for
from warmroute.sim import ServiceTime, SimReplica, SimStats, render_metrics
from warmroute.sim.openai_api import text

ROOT = Path(__file__).resolve().parents[2]
Start = Callable[..., Awaitable[tuple[SimReplica, str]]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start replicas on free ports; returns ``(replica, base_url)``; stops them all after."""
    started: list[SimReplica] = []

    async def _start(
        slots: int = 1, load_seconds: float = 0.0, service_ms: float = 20.0
    ) -> tuple[SimReplica, str]:
        replica = SimReplica(slots, load_seconds, ServiceTime("fixed", service_ms), 1, "m1")
        started.append(replica)
        port = await replica.start("127.0.0.1", 0)
        return replica, f"http://127.0.0.1:{port}"

    yield _start
    for replica in started:
        await replica.stop()


async def stats(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/stats") as resp:
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result


async def post(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with session.post(url, json={"prompt": "hi"}, headers=headers) as resp:
        return resp.status, await resp.json()


def in_flight_is(
    session: aiohttp.ClientSession, base: str, n: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool((await stats(session, base))["in_flight"] == n)

    return check


async def test_loading_then_warm(start: Start, session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    replica, base = await start(load_seconds=0.5)

    async with session.get(f"{base}/health") as resp:
        assert resp.status == 503
        assert await resp.json() == {"status": "loading"}
        assert resp.headers["x-sim-replica"] == replica.address
    assert await post(session, f"{base}/v1/completions") == (503, {"error": "loading"})
    counters = await stats(session, base)
    assert (counters["received"], counters["received_while_loading"]) == (1, 1)
    assert counters["warm"] is False

    async def healthy() -> bool:
        async with session.get(f"{base}/health") as resp:
            return resp.status == 200 and await resp.json() == {"status": "ok"}

    await wait_for(healthy, timeout=5.0, what="/health 200")
    assert loop.time() - started_at >= 0.49
    status, body = await post(session, f"{base}/v1/completions")
    assert status == 200 and body["replica"] == replica.address
    assert (await stats(session, base))["warm"] is True


async def test_slot_limit_refuses_the_second_concurrent_request(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(slots=1, service_ms=300.0)
    first = asyncio.create_task(post(session, f"{base}/v1/completions"))
    await wait_for(in_flight_is(session, base, 1), what="first request in its slot")

    second = await post(session, f"{base}/v1/completions")

    assert second == (503, {"error": "replica full"})
    status, body = await first
    assert status == 200 and body["service_ms"] == 300.0
    counters = await stats(session, base)
    assert counters["received_while_full"] == 1
    assert (counters["received"], counters["completed"], counters["cancelled"]) == (2, 1, 0)
    assert (counters["in_flight"], counters["max_in_flight"]) == (0, 1)
    assert replica.stats().received_while_full == 1


async def test_slots_bound_concurrency_exactly(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(slots=2, service_ms=500.0)
    held = [asyncio.create_task(post(session, f"{base}/v1/chat/completions")) for _ in range(2)]
    await wait_for(in_flight_is(session, base, 2), what="both slots taken")

    refused = await asyncio.gather(*(post(session, f"{base}/v1/completions") for _ in range(3)))

    assert [status for status, _ in refused] == [503, 503, 503]
    assert [status for status, _ in await asyncio.gather(*held)] == [200, 200]
    assert replica.stats().received_while_full == 3
    assert replica.stats().max_in_flight == 2


async def test_json_slot_is_free_before_the_response_arrives(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(service_ms=50.0)
    async with session.post(f"{base}/v1/completions", headers={"x-request-id": "r-1"}) as resp:
        # Headers are in: the replica must already count the slot as free.
        assert replica.stats().in_flight == 0
        assert resp.headers["x-sim-replica"] == replica.address
        body = await resp.json()
    # OpenAI's shape, plus which replica served it, for whom and how long.
    assert body["object"] == "text_completion" and body["choices"][0]["finish_reason"] == "stop"
    assert {k: body[k] for k in ("replica", "model", "request_id", "service_ms")} == {
        "replica": replica.address,
        "model": "m1",
        "request_id": "r-1",
        "service_ms": 50.0,
    }


async def test_sse_stream_sends_n_events_then_done(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(service_ms=200.0)
    headers = {"x-sim-stream-chunks": "4", "x-request-id": "s-1"}
    events: list[str] = []
    async with session.post(f"{base}/v1/chat/completions", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-sim-replica"] == replica.address
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[len(b"data: ") :].decode().strip())
                if events[-1] == "[DONE]":
                    # The last event is here: the slot must already be free.
                    assert replica.stats().in_flight == 0

    # The header asks for exactly 4 events: OpenAI chunks, the role in the first and the
    # finish reason in the last.
    assert len(events) == 5 and events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    assert "".join(d["content"] for d in deltas) == text(4)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert replica.last_headers["x-request-id"] == "s-1"
    counters = await stats(session, base)
    assert (counters["in_flight"], counters["completed"], counters["cancelled"]) == (0, 1, 0)


async def test_client_disconnect_frees_the_slot(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(service_ms=2000.0)
    async with aiohttp.ClientSession() as doomed:
        request = asyncio.create_task(post(doomed, f"{base}/v1/completions"))
        await wait_for(in_flight_is(session, base, 1), what="request in its slot")
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request

    # Well before the 2 s service time ends: only the disconnect can have freed the slot.
    await wait_for(in_flight_is(session, base, 0), timeout=1.5, what="slot freed")
    counters = await stats(session, base)
    assert (counters["cancelled"], counters["completed"], counters["received"]) == (1, 0, 1)
    assert replica.stats().cancelled == 1
    status, _ = await post(session, f"{base}/v1/completions", {"x-sim-service-ms": "1"})
    assert status == 200


async def test_client_disconnect_mid_stream_frees_the_slot(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(service_ms=2000.0)
    headers = {"x-sim-stream-chunks": "20"}
    async with aiohttp.ClientSession() as doomed:
        resp = await doomed.post(f"{base}/v1/completions", headers=headers)
        assert (await resp.content.readline()).startswith(b"data: ")
        resp.close()  # drop the connection after the first event

    await wait_for(in_flight_is(session, base, 0), timeout=1.5, what="slot freed")
    assert (replica.stats().cancelled, replica.stats().completed) == (1, 0)


async def test_simulated_status(start: Start, session: aiohttp.ClientSession) -> None:
    replica, base = await start()
    headers = {"x-sim-status": "500", "x-sim-service-ms": "10"}
    async with session.post(f"{base}/v1/completions", headers=headers) as resp:
        assert resp.status == 500
        assert resp.headers["x-sim-replica"] == replica.address
        body = await resp.json()
    assert body["error"] == "simulated status 500" and body["service_ms"] == 10.0
    counters = await stats(session, base)
    assert (counters["completed"], counters["in_flight"]) == (1, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-sim-service-ms", "soon"),
        ("x-sim-service-ms", "-1"),
        ("x-sim-service-ms", "nan"),
        ("x-sim-status", "99"),
        ("x-sim-status", "600"),
        ("x-sim-status", "5e2"),
        ("x-sim-stream-chunks", "-2"),
    ],
)
async def test_malformed_sim_header_is_400_and_not_counted(
    start: Start, session: aiohttp.ClientSession, name: str, value: str
) -> None:
    _, base = await start()
    status, body = await post(session, f"{base}/v1/completions", {name: value})
    assert status == 400 and name in body["error"]
    assert (await stats(session, base))["received"] == 0


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_metrics_use_vllm_names_and_values(
    start: Start, session: aiohttp.ClientSession
) -> None:
    _, base = await start(slots=2, service_ms=400.0)
    held = asyncio.create_task(post(session, f"{base}/v1/completions"))
    await wait_for(in_flight_is(session, base, 1), what="request in its slot")

    async with session.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        busy = parse_metrics(await resp.text())
    vllm = '{engine="0",model_name="m1"}'
    assert busy[f"vllm:num_requests_running{vllm}"] == 1
    assert busy[f"vllm:num_requests_waiting{vllm}"] == 0
    assert busy[f"vllm:kv_cache_usage_perc{vllm}"] == 0.5
    assert busy['sim_requests_completed_total{model_name="m1"}'] == 0

    assert (await held)[0] == 200
    async with session.get(f"{base}/metrics") as resp:
        idle = parse_metrics(await resp.text())
    assert idle == {
        f"vllm:num_requests_running{vllm}": 0,
        f"vllm:num_requests_waiting{vllm}": 0,
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m1",reason="capacity"}': 0,
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m1",reason="deferred"}': 0,
        f"vllm:kv_cache_usage_perc{vllm}": 0.0,
        'sim_requests_received_total{model_name="m1"}': 1,
        'sim_requests_received_while_full_total{model_name="m1"}': 0,
        'sim_requests_received_while_loading_total{model_name="m1"}': 0,
        'sim_requests_completed_total{model_name="m1"}': 1,
        'sim_requests_cancelled_total{model_name="m1"}': 0,
        'sim_requests_failed_total{model_name="m1"}': 0,
        'sim_max_in_flight{model_name="m1"}': 1,
    }


def test_metrics_escape_the_model_label() -> None:
    text = render_metrics('a"b\\c', SimStats(slots=1))
    assert 'vllm:num_requests_running{engine="0",model_name="a\\"b\\\\c"} 0.0' in text


async def test_health_toggle(start: Start, session: aiohttp.ClientSession) -> None:
    _, base = await start()

    async def set_health(body: object) -> int:
        async with session.post(f"{base}/admin/health", json=body) as resp:
            return resp.status

    assert await set_health({"healthy": False}) == 200
    async with session.get(f"{base}/health") as resp:
        assert (resp.status, await resp.json()) == (503, {"status": "unhealthy"})
    assert (await post(session, f"{base}/v1/completions"))[0] == 200  # still serves
    assert (await stats(session, base))["healthy"] is False
    assert await set_health({"healthy": "no"}) == 400
    assert await set_health({"healthy": True}) == 200
    async with session.get(f"{base}/health") as resp:
        assert resp.status == 200


async def test_headers_reach_the_replica_and_every_response_is_tagged(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start()
    headers = {"X-Request-Id": "abc", "X-Warmroute-Lease": "7"}
    async with session.get(f"{base}/v1/anything", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["request_id"] == "abc"
    assert replica.last_headers["x-request-id"] == "abc"
    assert replica.last_headers["x-warmroute-lease"] == "7"
    async with session.get(f"{base}/nowhere") as resp:
        assert resp.status == 404
        assert resp.headers["x-sim-replica"] == replica.address


async def test_reset_zeroes_counters_but_not_in_flight(
    start: Start, session: aiohttp.ClientSession
) -> None:
    replica, base = await start(service_ms=300.0)
    held = asyncio.create_task(post(session, f"{base}/v1/completions"))
    await wait_for(in_flight_is(session, base, 1), what="request in its slot")
    assert (await post(session, f"{base}/v1/completions"))[0] == 503

    async with session.post(f"{base}/admin/reset") as resp:
        after_reset = await resp.json()

    assert after_reset["in_flight"] == 1 and after_reset["max_in_flight"] == 1
    assert after_reset["received"] == after_reset["received_while_full"] == 0
    assert replica.last_headers == {}
    assert (await held)[0] == 200
    counters = await stats(session, base)
    assert (counters["in_flight"], counters["completed"], counters["received"]) == (0, 1, 0)


async def test_lifecycle_errors_and_restart(start: Start, session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="slots"):
        SimReplica(0, 0.0, ServiceTime("fixed", 1.0), None)
    with pytest.raises(ValueError, match="load_seconds"):
        SimReplica(1, -1.0, ServiceTime("fixed", 1.0), None)
    replica, base = await start()
    assert (await post(session, f"{base}/v1/completions"))[0] == 200
    with pytest.raises(RuntimeError, match="already started"):
        await replica.start("127.0.0.1", 0)
    await replica.stop()
    await replica.stop()  # idempotent
    assert replica.stats().warm is False

    port = await replica.start("127.0.0.1", 0)  # a restart; the fixture stops it again
    await wait_for(lambda: replica.stats().warm, what="warm after restart")
    status, body = await post(session, f"http://127.0.0.1:{port}/v1/completions")
    assert status == 200 and body["replica"] == f"127.0.0.1:{port}"
    assert replica.stats().completed == 2  # counters survive a restart


async def test_cli_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    args = ["--port", "0", "--load-seconds", "0.1", "--distribution", "lognormal"]
    args += ["--median-ms", "20", "--sigma", "0.5", "--seed", "1", "--model", "cli-model"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmroute.sim", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        lines: list[str] = []
        while not any(" warm after " in line for line in lines):
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=10.0)).decode()
            assert line, f"CLI exited early: {lines}"
            lines.append(line)
        address = next(m[1] for line in lines if (m := re.search(r"replica (\S+) listen", line)))
        async with session.post(f"http://{address}/v1/completions") as resp:
            assert resp.status == 200 and (await resp.json())["model"] == "cli-model"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10.0) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_fail_mode_answers_every_request_at_once_while_health_stays_green(
    start: Start, session: aiohttp.ClientSession
) -> None:
    _, base = await start(service_ms=5_000)

    async def set_fail(body: object) -> int:
        async with session.post(f"{base}/admin/fail", json=body) as resp:
            return resp.status

    assert await set_fail({"status": 500}) == 200
    for path in ("/v1/completions", "/v1/x"):
        status, body = await post(session, f"{base}{path}")  # at once: no 5 s service time
        assert (status, body) == (500, {"error": "replica failing"})
    async with session.get(f"{base}/health") as resp:
        assert resp.status == 200
    counters = await stats(session, base)
    assert (counters["received"], counters["failed"], counters["in_flight"]) == (2, 2, 0)
    assert counters["fail_status"] == 500
    for bad in ({"status": 200}, {"status": "500"}, {"status": True}, {}, [500]):
        assert await set_fail(bad) == 400, bad
    assert await set_fail({"status": None}) == 200  # healed
    assert (await stats(session, base))["fail_status"] is None
    async with session.post(f"{base}/v1/x", headers={"x-sim-service-ms": "1"}) as resp:
        assert resp.status == 200
