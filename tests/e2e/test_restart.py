"""SIGKILL of `warmroute serve` while every slot is busy, then a restart: real processes, real
Envoy, simulated replicas with one slot each.

Before the start fence, the new process saw three free replicas and leased them at once:
174 requests reached a full replica in one run (DESIGN fact 11). Now it holds every slot
until it knows each replica's load: the end of the old requests (access log), Envoy's
load reports (LRS), or the replica's metrics. What each test checks, at the replicas:
no request ever arrived at a full one; routing resumed; every old request was answered;
at quiescence no lease is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.test_epp_envoy import gateway_bootstrap
from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.soak import ControlPlaneProcess
from warmroute.xds.bootstrap import ads_bootstrap, to_json

MODEL = "restart-model"
H = {"x-model": MODEL}


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path, *, metrics: bool
) -> AsyncIterator[tuple[ControlPlaneProcess, list[SimReplica], str]]:
    async with contextlib.AsyncExitStack() as cleanup:
        sims = []
        for i in range(3):
            sim = SimReplica(1, 0.0, ServiceTime("fixed", 30), seed=i, model=MODEL)
            cleanup.push_async_callback(sim.stop)
            await sim.start("127.0.0.1", 0)
            sims.append(sim)
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        pool: dict[str, Any] = {
            "name": "main",
            "models": [MODEL],
            "slots": 1,
            "queue": {"timeout_seconds": 30},
            "probe": {"interval_seconds": 0.05},
            "replicas": [s.address for s in sims],
        }
        if metrics:
            pool["metrics"] = {"interval_seconds": 0.2}
        raw = {
            "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
            "control": {
                "grpc": f"127.0.0.1:{free_port()}",
                "admin": admin,
                "expire_interval_seconds": 0.2,
            },
            "pools": [pool],
        }
        path = tmp_path / "warmroute.yaml"
        path.write_text(yaml.safe_dump(raw))
        serve = ControlPlaneProcess(path, admin, tmp_path / "serve.log")
        cleanup.push_async_callback(serve.stop)
        await serve.start()
        cfg = Config.model_validate(raw)
        envoy = EnvoyProcess(to_json(ads_bootstrap(cfg, node_id="envoy-0")), cfg.envoy.admin)
        cleanup.push_async_callback(envoy.stop)
        await envoy.start()
        yield serve, sims, f"http://{listen}"


async def _post(http: aiohttp.ClientSession, url: str, service_ms: int = 30) -> int:
    try:
        headers = {**H, "x-sim-service-ms": str(service_ms)}
        async with http.post(url + "/v1/completions", headers=headers, json={}) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError:
        return 0


async def _routable(serve: ControlPlaneProcess, http: aiohttp.ClientSession) -> bool:
    state = await serve.state(http)
    if state is None or state["fence"]["active"]:
        return False
    replicas = state["pools"][0]["replicas"]
    return len(replicas) == 3 and all(r["phase"] == "warm" for r in replicas)


class Traffic:
    """``count`` clients sending short requests in a loop from the restart on; a refused
    client backs off 50 ms, as real ones do. Records every answer, the time of the first
    200 and how busy the replicas were when each 200 came."""

    def __init__(self, http: aiohttp.ClientSession, url: str, sims: list[SimReplica]) -> None:
        self.http, self.url, self.sims = http, url, sims
        self.answers: Counter[int] = Counter()
        self.first_ok: float | None = None
        self.busy_when_served: list[int] = []
        self.restarted = time.monotonic()

    async def run_until(self, done: Any, count: int, what: str) -> None:
        """Send until ``await done()`` is true (within 40 s)."""
        stop = asyncio.Event()
        workers = [asyncio.create_task(self._client(stop)) for _ in range(count)]
        try:
            await wait_for(done, timeout=40, what=what)
        finally:
            stop.set()
            await asyncio.gather(*workers)

    async def _client(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            status = await _post(self.http, self.url)
            self.answers[status] += 1
            if status == 200:
                if self.first_ok is None:
                    self.first_ok = time.monotonic() - self.restarted
                self.busy_when_served.append(sum(s.stats().in_flight for s in self.sims))
            else:
                await asyncio.sleep(0.05)


async def _settled(serve: ControlPlaneProcess, http: aiohttp.ClientSession) -> dict[str, Any]:
    """The control plane's /state once no lease is left (within 15 s)."""

    async def quiet() -> bool:
        state = await serve.state(http)
        return state is not None and state["leases"] == 0

    await wait_for(quiet, timeout=15, what="no lease left")
    state = await serve.state(http)
    assert state is not None
    return state


def _books(sims: list[SimReplica], traffic: Traffic, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "answers": traffic.answers,
        "full": sum(s.stats().received_while_full for s in sims),
        "peak": max(s.stats().max_in_flight for s in sims),
        "first_ok": traffic.first_ok,
        "served_beside_old": max(traffic.busy_when_served, default=0),
        "lifted": state["fence"]["lifted"],
        "reporting": state["fence"]["reporting_envoys"],
    }


async def _kill_and_restart_under_load(tmp_path: Path, *, metrics: bool) -> dict[str, Any]:
    async with (
        fleet(tmp_path, metrics=metrics) as (serve, sims, url),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
    ):
        await wait_for(lambda: _routable(serve, http), timeout=30, what="a routable fleet")
        # Every slot busy: two long requests and one that ends a few seconds after the
        # restart, all routed by the process about to die.
        old = [asyncio.create_task(_post(http, url, ms)) for ms in (12_000, 12_000, 3_000)]
        await wait_for(lambda: all(s.stats().in_flight == 1 for s in sims), what="busy")
        await serve.stop(signal.SIGKILL)
        await asyncio.sleep(0.2)  # the fault: 0.2 s without a control plane
        traffic = Traffic(http, url, sims)
        await serve.start()
        old_done = asyncio.gather(*old)

        async def resumed() -> bool:
            return old_done.done() and traffic.answers[200] >= 20

        await traffic.run_until(resumed, 8, "the old requests answered and routing resumed")
        return {"old": old_done.result(), **_books(sims, traffic, await _settled(serve, http))}


def _report(name: str, r: dict[str, Any]) -> None:
    print(
        f"\n{name}: first request routed {r['first_ok']:.2f}s after the restart; "
        f"answers {dict(r['answers'])}; fence lifted by {r['lifted']}; "
        f"requests onto a full replica {r['full']}"
    )


async def test_a_restart_under_load_never_overfills_a_replica(tmp_path: Path) -> None:
    r = await _kill_and_restart_under_load(tmp_path, metrics=False)
    _report("no metrics", r)
    assert r["full"] == 0 and r["peak"] <= 1
    assert r["old"] == [200, 200, 200]  # the requests routed before the crash finished
    # The short old request's end freed its replica (from the access log), before the
    # Envoy's load report lifted the rest.
    assert r["lifted"].get("ends", 0) >= 1
    assert r["lifted"].get("reports", 0) >= 1
    # Routing resumed while the two long old requests still ran.
    assert r["served_beside_old"] >= 2


async def test_a_restart_with_replica_metrics_never_overfills_a_replica(tmp_path: Path) -> None:
    r = await _kill_and_restart_under_load(tmp_path, metrics=True)
    _report("with metrics", r)
    assert r["full"] == 0 and r["peak"] <= 1
    assert r["old"] == [200, 200, 200]
    assert r["lifted"].get("scrape", 0) >= 1
    assert r["served_beside_old"] >= 2


# -- endpoint-picker mode: the gateway's Envoy -------------------------------------------------


def _gateway(listen: int, admin: int, picker: int, *, load_reports: bool) -> str:
    """The Gateway API Inference Extension's own picker config (the EPP tests' fixture);
    with ``load_reports``, plus the one block warmroute's README asks a gateway to add."""
    doc = json.loads(gateway_bootstrap(listen, admin, picker))
    if load_reports:
        doc["cluster_manager"] = {"load_stats_config": LOAD_STATS_CONFIG}
    return json.dumps(doc)


LOAD_STATS_CONFIG = {
    "api_type": "GRPC",
    "transport_api_version": "V3",
    "grpc_services": [{"envoy_grpc": {"cluster_name": "ext_proc"}}],
}


async def _picker_restart_under_load(
    tmp_path: Path, *, load_reports: bool, metrics: bool = False
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as cleanup:
        sims = []
        for i in range(3):
            sim = SimReplica(1, 0.0, ServiceTime("fixed", 30), seed=i, model=MODEL)
            cleanup.push_async_callback(sim.stop)
            await sim.start("127.0.0.1", 0)
            sims.append(sim)
        picker, listen, gw_admin, admin = free_port(), free_port(), free_port(), free_port()
        raw = {
            "control": {"grpc": f"127.0.0.1:{picker}", "admin": f"127.0.0.1:{admin}"},
            "pools": [
                {
                    "name": "main",
                    "models": [MODEL],
                    "slots": 1,
                    "probe": {"interval_seconds": 0.05},
                    "replicas": [s.address for s in sims],
                }
            ],
            "epp": {"enabled": True},
        }
        if metrics:
            raw["pools"][0]["metrics"] = {"interval_seconds": 0.2}  # type: ignore[index]
        path = tmp_path / "warmroute.yaml"
        path.write_text(yaml.safe_dump(raw))
        serve = ControlPlaneProcess(path, f"127.0.0.1:{admin}", tmp_path / "serve.log")
        cleanup.push_async_callback(serve.stop)
        await serve.start()
        envoy = EnvoyProcess(
            _gateway(listen, gw_admin, picker, load_reports=load_reports), f"127.0.0.1:{gw_admin}"
        )
        cleanup.push_async_callback(envoy.stop)
        await envoy.start()
        url = f"http://127.0.0.1:{listen}"
        http = await cleanup.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        )
        await wait_for(lambda: _routable(serve, http), timeout=40, what="a routable picker")
        old = [asyncio.create_task(_post(http, url, 12_000)) for _ in range(3)]
        await wait_for(lambda: all(s.stats().in_flight == 1 for s in sims), what="busy")
        await serve.stop(signal.SIGKILL)
        await asyncio.sleep(0.2)  # the fault: 0.2 s without a picker
        traffic = Traffic(http, url, sims)
        await serve.start()
        statuses = await asyncio.gather(*old)
        await traffic.run_until(lambda: traffic.answers[200] >= 20, 6, "routing resumed")
        state = await _settled(serve, http)
        if load_reports:  # the gateway's LRS stream comes back after Envoy's fixed 5 s

            async def reporting() -> bool:
                state = await serve.state(http)
                return state is not None and state["fence"]["reporting_envoys"] >= 1

            await wait_for(reporting, timeout=15, what="the gateway's load reports")
            state = await _settled(serve, http)
        return {"old": statuses, **_books(sims, traffic, state)}


@pytest.mark.parametrize(
    ("load_reports", "metrics"),
    [(False, False), (True, False), (False, True)],
    ids=["plain-gateway", "gateway-lrs", "replica-metrics"],
)
async def test_a_picker_restart_under_load_never_overfills_a_replica(
    tmp_path: Path, load_reports: bool, metrics: bool
) -> None:
    r = await _picker_restart_under_load(tmp_path, load_reports=load_reports, metrics=metrics)
    _report(f"endpoint picker, load reports {load_reports}, metrics {metrics}", r)
    assert r["full"] == 0 and r["peak"] <= 1
    # The gateway ended the requests whose picker stream broke: an answer, not a hang.
    assert all(status >= 500 for status in r["old"]), r["old"]
    how = "scrape" if metrics else "grace"
    assert r["lifted"].get(how, 0) + r["lifted"].get("reports", 0) == 3, r["lifted"]
    if load_reports:
        assert r["reporting"] >= 1
