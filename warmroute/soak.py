"""``warmroute soak``: traffic under a mixed fault schedule, then the books are checked.

Runs simulated replicas, the control plane and a real Envoy on loopback; sends requests
from many clients (some leave early) while, at random, a replica is killed and restarted,
a replica turns unhealthy and back, Envoy restarts, or the control plane restarts. At the
end, at quiescence, it prints what every promise depends on: requests sent = responses +
clean errors (nothing hangs), no lease left, every slot free, no replica ever over its
slots. Exit status 1 if any of those fails.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.xds.bootstrap import ads_bootstrap, to_json

MODEL = "soak-model"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Books:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    left_early: int = 0
    hung: int = 0
    faults: Counter[str] = field(default_factory=Counter)


async def soak(duration: float, replicas: int, clients: int, seed: int) -> int:
    rng = random.Random(seed)
    sims = [
        SimReplica(1, 0.2, ServiceTime("lognormal", 50, 0.8), seed=seed + i, model=MODEL)
        for i in range(replicas)
    ]
    ports = [await s.start("127.0.0.1", 0) for s in sims]
    listen = f"127.0.0.1:{_port()}"
    cfg = Config.model_validate(
        {
            "envoy": {"listen": listen, "admin": f"127.0.0.1:{_port()}"},
            "control": {"grpc": f"127.0.0.1:{_port()}", "admin": f"127.0.0.1:{_port()}",
                        "expire_interval_seconds": 0.2},
            "pools": [{
                "name": "soak", "models": [MODEL], "max_request_seconds": 10,
                "queue": {"timeout_seconds": 5, "max_waiting": 500},
                "probe": {"interval_seconds": 0.1},
                "metrics": {"interval_seconds": 0.2, "reconcile_after_seconds": 1.0},
                "replicas": [f"127.0.0.1:{p}" for p in ports],
            }],
        }
    )  # fmt: skip
    plane = ControlPlane(cfg)
    await plane.start()
    envoy = EnvoyProcess(to_json(ads_bootstrap(cfg)), cfg.envoy.admin)
    await envoy.start()
    books = Books()
    deadline = time.monotonic() + duration
    print(f"soak: {replicas} replicas, {clients} clients, {duration:g}s, seed {seed}")

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            books.sent += 1
            request = asyncio.create_task(_post(http, listen))
            leave = rng.random() < 0.1
            done, _ = await asyncio.wait({request}, timeout=rng.uniform(0, 0.3) if leave else 30)
            if request in done:
                books.statuses[request.result()] += 1
            elif leave:
                request.cancel()
                books.left_early += 1
            else:
                request.cancel()
                books.hung += 1

    async def chaos() -> None:
        nonlocal plane
        while time.monotonic() < deadline - 2:
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            fault = rng.choice(["kill replica", "unhealthy replica", "restart envoy",
                                "restart control plane"])  # fmt: skip
            books.faults[fault] += 1
            print(f"  t={duration - (deadline - time.monotonic()):5.1f}s  {fault}", flush=True)
            if fault == "kill replica":
                i = rng.randrange(replicas)
                await sims[i].stop()
                await asyncio.sleep(0.5)
                await sims[i].start("127.0.0.1", ports[i])
            elif fault == "unhealthy replica":
                sim = rng.choice(sims)
                sim.set_healthy(False)
                await asyncio.sleep(0.8)
                sim.set_healthy(True)
            elif fault == "restart envoy":
                await envoy.stop()
                await envoy.start()
            else:
                await plane.stop()
                plane = ControlPlane(cfg)
                await plane.start()

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await asyncio.gather(chaos(), *(client(http) for _ in range(clients)))
        quiet_by = time.monotonic() + 15
        while time.monotonic() < quiet_by and plane.registry.view().leases:  # noqa: ASYNC110 (a deadline, no event to await)
            await asyncio.sleep(0.1)
        leases = plane.registry.view().leases
        busy = sum(s.stats().in_flight for s in sims)
        full = sum(s.stats().received_while_full for s in sims)
        peak = max(s.stats().max_in_flight for s in sims)
        answered = sum(books.statuses.values())
    finally:
        await envoy.stop()
        await plane.stop()
        for s in sims:
            await s.stop()

    ok = books.statuses.get(200, 0)
    print(f"faults injected: {dict(books.faults)}")
    print(f"requests sent {books.sent} = answered {answered} + left early {books.left_early}"
          f" + hung {books.hung}")  # fmt: skip
    print(f"  answers: {ok} ok, {answered - ok} clean errors {dict(books.statuses)}")
    print(f"at quiescence: leases left {leases}, replica slots busy {busy}")
    print(f"requests that reached a full replica: {full}; max in flight on a replica: {peak}")
    good = books.hung == 0 and leases == 0 and busy == 0 and full == 0 and peak <= 1
    good = good and books.sent == answered + books.left_early
    print("PASS" if good else "FAIL")
    return 0 if good else 1


async def _post(http: aiohttp.ClientSession, listen: str) -> int:
    try:
        async with http.post(f"http://{listen}/v1/soak", headers={"x-model": MODEL}) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError:
        return 0  # connection refused/reset (e.g. Envoy restarting)
