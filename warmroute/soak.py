"""``warmroute soak``: traffic under a mixed fault schedule, then the books are checked.

Runs simulated replicas, the control plane (``warmroute serve``, its own process, so it
can be killed) and a real Envoy on loopback; sends requests from many clients (some
leave early, some hold their replica for seconds) while, at random, a replica is killed
and restarted, a replica turns unhealthy and back, a replica fails every request fast
with its health check green, Envoy restarts, or the control plane restarts gracefully
or is SIGKILLed with long requests in flight. At the end, at quiescence, it prints what
every promise depends on: requests sent = responses + clean errors (nothing hangs), no
lease left, every slot free, no replica ever over its slots. Exit status 1 if any fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.xds.bootstrap import ads_bootstrap, to_json

MODEL = "soak-model"
FAULTS = (
    "kill replica",
    "unhealthy replica",
    "failing replica",
    "restart envoy",
    "restart control plane",
    "kill -9 control plane",
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Books:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)  # "503 queue_timeout", ...
    left_early: int = 0
    hung: int = 0
    faults: Counter[str] = field(default_factory=Counter)


class ControlPlaneProcess:
    """``warmroute serve -c PATH`` in its own process: stopped, killed, started again."""

    def __init__(self, path: Path, admin: str, log: Path) -> None:
        self.path, self.admin, self.log = path, admin, log
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "warmroute", "serve", "-c", str(self.path),
                stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def state(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            async with http.get(f"http://{self.admin}/state") as r:
                return dict(await r.json()) if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None


def _config(ports: Sequence[int]) -> dict[str, Any]:
    return {
        "envoy": {"listen": f"127.0.0.1:{_port()}", "admin": f"127.0.0.1:{_port()}"},
        "control": {"grpc": f"127.0.0.1:{_port()}", "admin": f"127.0.0.1:{_port()}",
                    "expire_interval_seconds": 0.2},
        "pools": [{
            "name": "soak", "models": [MODEL], "max_request_seconds": 10,
            "queue": {"timeout_seconds": 8, "max_waiting": 500},
            "probe": {"interval_seconds": 0.1},
            "metrics": {"interval_seconds": 0.2, "reconcile_after_seconds": 1.0},
            "outlier_detection": {"base_ejection_seconds": 1.0, "max_ejection_seconds": 4.0},
            "replicas": [f"127.0.0.1:{p}" for p in ports],
        }],
    }  # fmt: skip


async def soak(
    duration: float,
    replicas: int,
    clients: int,
    seed: int,
    faults: Sequence[str] = FAULTS,
) -> int:
    rng = random.Random(seed)
    # The fault schedule has its own generator: the same seed gives the same faults in
    # the same order, whatever the clients drew meanwhile.
    chaos_rng = random.Random(seed + 1_000_003)
    sims = [
        SimReplica(1, 0.2, ServiceTime("lognormal", 50, 0.8), seed=seed + i, model=MODEL)
        for i in range(replicas)
    ]
    ports = [await s.start("127.0.0.1", 0) for s in sims]
    raw = _config(ports)
    cfg = Config.model_validate(raw)
    listen = cfg.envoy.listen
    workdir = Path(tempfile.mkdtemp(prefix="warmroute-soak-"))
    path = workdir / "warmroute.yaml"
    path.write_text(yaml.safe_dump(raw))
    plane = ControlPlaneProcess(path, cfg.control.admin, workdir / "serve.log")
    await plane.start()
    envoy = EnvoyProcess(to_json(ads_bootstrap(cfg)), cfg.envoy.admin)
    await envoy.start()
    books = Books()
    print(f"soak: {replicas} replicas, {clients} clients, {duration:g}s, seed {seed}")
    print(f"  faults drawn from: {', '.join(faults)}; control plane log {plane.log}")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await _wait_routable(plane, http, replicas)
        deadline = time.monotonic() + duration

        async def client() -> None:
            while time.monotonic() < deadline:
                books.sent += 1
                # One request in ten holds its replica for seconds: a kill -9 of the control
                # plane then finds every slot busy with requests the next process never saw.
                service = rng.choice([None] * 9 + [str(rng.randrange(1000, 3000))])
                request = asyncio.create_task(_post(http, listen, service))
                leave = rng.random() < 0.1
                done, _ = await asyncio.wait(
                    {request}, timeout=rng.uniform(0, 0.3) if leave else 30
                )
                if request in done:
                    status, code = request.result()
                    books.statuses[status] += 1
                    if status != 200:
                        books.codes[f"{status} {code}"] += 1
                    if status != 200:
                        await asyncio.sleep(0.05)  # a refused client backs off
                elif leave:
                    request.cancel()
                    books.left_early += 1
                else:
                    request.cancel()
                    books.hung += 1

        async def chaos() -> None:
            while time.monotonic() < deadline - 2:
                await asyncio.sleep(chaos_rng.uniform(2.0, 5.0))
                if time.monotonic() >= deadline - 2:
                    break  # no fault the books could not see settle
                fault = chaos_rng.choice(list(faults))
                books.faults[fault] += 1
                print(f"  t={duration - (deadline - time.monotonic()):5.1f}s  {fault}", flush=True)
                await _inject(fault, chaos_rng, sims, ports, envoy, plane)

        await asyncio.gather(chaos(), *(client() for _ in range(clients)))
        leases = await _quiesce(plane, http)
        busy = sum(s.stats().in_flight for s in sims)
        full = sum(s.stats().received_while_full for s in sims)
        peak = max(s.stats().max_in_flight for s in sims)
        answered = sum(books.statuses.values())
    await envoy.stop()
    await plane.stop()
    for s in sims:
        await s.stop()

    ok = books.statuses.get(200, 0)
    print(f"faults injected: {dict(books.faults)}")
    print(f"requests sent {books.sent} = answered {answered} + left early {books.left_early}"
          f" + hung {books.hung}")  # fmt: skip
    print(f"  answers: {ok} ok, {answered - ok} clean errors {dict(books.statuses)}")
    print(f"  errors by code: {dict(books.codes.most_common())}")
    print(f"at quiescence: leases left {leases}, replica slots busy {busy}")
    print(f"requests that reached a full replica: {full}; max in flight on a replica: {peak}")
    good = books.hung == 0 and leases == 0 and busy == 0 and full == 0 and peak <= 1
    good = good and books.sent == answered + books.left_early
    print("PASS" if good else "FAIL")
    return 0 if good else 1


async def _inject(
    fault: str,
    rng: random.Random,
    sims: Sequence[SimReplica],
    ports: Sequence[int],
    envoy: EnvoyProcess,
    plane: ControlPlaneProcess,
) -> None:
    if fault == "kill replica":
        i = rng.randrange(len(sims))
        await sims[i].stop()
        await asyncio.sleep(0.5)
        await sims[i].start("127.0.0.1", ports[i])
    elif fault == "unhealthy replica":
        sim = rng.choice(sims)
        sim.set_healthy(False)
        await asyncio.sleep(0.8)
        sim.set_healthy(True)
    elif fault == "failing replica":
        sim = rng.choice(sims)
        sim.set_failing(500)  # every request 500 at once, /health green
        await asyncio.sleep(2.0)
        sim.set_failing(None)
    elif fault == "restart envoy":
        await envoy.stop()
        await envoy.start()
    elif fault == "restart control plane":
        await plane.stop()
        await plane.start()
    elif fault == "kill -9 control plane":
        await plane.stop(signal.SIGKILL)
        await asyncio.sleep(0.2)
        await plane.start()
    else:
        raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")


async def _wait_routable(
    plane: ControlPlaneProcess, http: aiohttp.ClientSession, replicas: int
) -> None:
    """Until every replica is warm and the start fence has lifted (at most 60 s)."""
    stop_at = time.monotonic() + 60
    while time.monotonic() < stop_at:
        state = await plane.state(http)
        if state is not None and not state["fence"]["held"]:
            warm = [r for p in state["pools"] for r in p["replicas"] if r["phase"] == "warm"]
            if len(warm) == replicas:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError("the fleet did not become routable within 60 s")


async def _quiesce(plane: ControlPlaneProcess, http: aiohttp.ClientSession) -> int:
    """Leases left once traffic stopped (waiting up to 20 s for the last ends)."""
    quiet_by = time.monotonic() + 20
    leases = -1
    while time.monotonic() < quiet_by:
        state = await plane.state(http)
        leases = -1 if state is None else int(state["leases"])
        if leases == 0:
            break
        await asyncio.sleep(0.1)
    return leases


async def _post(
    http: aiohttp.ClientSession, listen: str, service_ms: str | None
) -> tuple[int, str]:
    """The answer's status and, for an error, its JSON code (or what it was instead)."""
    headers = {"x-model": MODEL}
    if service_ms is not None:
        headers["x-sim-service-ms"] = service_ms
    with contextlib.suppress(aiohttp.ClientError):
        async with http.post(f"http://{listen}/v1/soak", headers=headers) as r:
            body = await r.read()
            if r.status == 200:
                return 200, ""
            return r.status, _error_code(body, r.headers)
    return 0, "connection refused or reset"  # e.g. Envoy restarting


def _error_code(body: bytes, headers: Mapping[str, str]) -> str:
    if "x-sim-replica" in headers:
        return "from the replica"  # a failing replica's 500, a full replica's 503
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "not JSON"
