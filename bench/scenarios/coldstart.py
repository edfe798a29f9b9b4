"""Cold start: a burst at zero replicas, scaled at request time vs by a metric poller.

Each repetition starts a fresh control plane (in this process) and a real Envoy over ADS.
The pool runs simulated replicas as local processes (``simulate``: a cold start of
``load_seconds`` before the warm probe passes), none at first. Then ``burst`` requests
arrive at once.

* ``warmroute``: the pool has ``autoscale`` (min 0, max 4). The first request that has to
  wait pokes the autoscaler, which asks the ``LocalScaler`` for replicas at once.
* ``poll P s``: the same stack without ``autoscale``; a poller in this process does what
  KEDA's Prometheus scaler does: every P seconds it reads ``warmroute_requests_waiting``
  from the control plane's ``/metrics`` and sets ``ceil(waiting / slots)`` replicas (capped
  at max, never fewer than it already has) through the same ``LocalScaler``. P = 15 s (the
  HPA's sync period) and 30 s (KEDA's default ``pollingInterval``). Where the burst falls
  in the poll cycle decides the delay, so each repetition draws the poller's phase (first
  poll after the burst) with a fixed seed, stratified over [0, P).

Measured from the burst: the first call to ``LocalScaler.set_replicas`` with a positive
count (the scale decision, same instant for both), the first replica leasable, the first
and the last response; and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib.child import output_to
from bench.lib.loadgen import Client, http_request
from bench.lib.util import MODEL, RESULTS, LogDir, free_port, free_ports, say
from bench.scenarios.coldstart_plan import (
    POOL,
    Rep,
    Timeline,
    desired_replicas,
    fmt_s,
    gauge,
    poll_phases,
    timeline,
)
from bench.scenarios.coldstart_report import write_report


def plane_config(tl: Timeline, autoscale: bool) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "name": POOL,
        "models": [MODEL],
        "slots": tl.slots,
        "queue": {"max_waiting": 1000, "timeout_seconds": tl.queue_timeout},
        "probe": {"path": "/health", "interval_seconds": 0.05},
        "simulate": {
            "replicas": 0, "base_port": free_ports(tl.max_replicas),
            "load_seconds": tl.load_seconds, "distribution": "fixed", "median_ms": tl.service_ms,
        },
    }  # fmt: skip
    if autoscale:
        pool["autoscale"] = {
            "min_replicas": 0, "max_replicas": tl.max_replicas, "idle_seconds": 600,
        }  # fmt: skip
    return {
        "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "pools": [pool],
    }


async def run_rep(
    tl: Timeline, name: str, period: float | None, phase: float | None, logs: LogDir, tag: str
) -> Rep:
    from warmroute.config import Config
    from warmroute.envoy_process import EnvoyProcess
    from warmroute.server import ControlPlane
    from warmroute.state import Phase
    from warmroute.xds.bootstrap import ads_bootstrap, to_json

    cfg = Config.model_validate(plane_config(tl, autoscale=period is None))
    pool_cfg = cfg.pools[0]
    plane = ControlPlane(cfg)
    loop = asyncio.get_running_loop()
    t0 = math.inf
    scale_calls: list[tuple[float, int]] = []
    spawn = plane.local_scaler.set_replicas
    replicas_log = logs.file(f"{tag}-replicas")

    async def recorded(pool: Any, replicas: int) -> None:
        scale_calls.append((loop.time() - t0, replicas))
        with output_to(replicas_log):
            await spawn(pool, replicas)

    plane.local_scaler.set_replicas = recorded  # type: ignore[method-assign]
    polls: list[tuple[float, float, int]] = []
    deadline = tl.queue_timeout + 30.0

    async def poller(every: float, first: float) -> None:
        url = f"http://{cfg.control.admin}/metrics"
        async with aiohttp.ClientSession() as http:
            for k in range(int(deadline / every) + 2):
                await asyncio.sleep(max(0.0, t0 + first + k * every - loop.time()))
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    text = await resp.text()
                waiting = gauge(text, "warmroute_requests_waiting", pool=POOL) or 0.0
                current = await plane.local_scaler.get_replicas(pool_cfg)
                want = desired_replicas(waiting, tl.slots, current, tl.max_replicas)
                polls.append((loop.time() - t0, waiting, want))
                if want != current:
                    await plane.local_scaler.set_replicas(pool_cfg, want)

    warm_at: list[float] = []

    async def watch_warm() -> None:
        pool = plane.registry.pools[POOL]
        for _ in range(int(deadline / 0.005)):
            if any(r.phase is Phase.WARM for r in pool.replicas.values()):
                warm_at.append(loop.time() - t0)
                return
            await asyncio.sleep(0.005)

    await plane.start()
    envoy = EnvoyProcess(
        to_json(ads_bootstrap(cfg, node_id="bench-envoy", variant="sotw")),
        cfg.envoy.admin,
        log_level="warning",
        log_path=str(logs.file(f"{tag}-envoy")),
    )
    client = Client("127.0.0.1", int(cfg.envoy.listen.rpartition(":")[2]))
    payload = http_request("127.0.0.1", tl.service_ms)
    helpers: list[asyncio.Task[None]] = []
    try:
        await envoy.start()
        assert await plane.local_scaler.get_replicas(pool_cfg) == 0

        async def one() -> tuple[float, int]:
            status = await client.request(payload, deadline)
            return loop.time() - t0, status

        t0 = loop.time()
        requests = [asyncio.create_task(one()) for _ in range(tl.burst)]
        helpers.append(asyncio.create_task(watch_warm()))
        if period is not None and phase is not None:
            helpers.append(asyncio.create_task(poller(period, phase)))
        done, pending = await asyncio.wait(requests, timeout=deadline + 5)
        for t in pending:
            t.cancel()
        results = [t.result() for t in done]
        replicas = await plane.local_scaler.get_replicas(pool_cfg)
    finally:
        for t in helpers:
            t.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        client.close()
        await envoy.stop()
        await plane.stop()
    ok = [t for t, status in results if 200 <= status < 300]
    ups = [t for t, n in scale_calls if n > 0]
    return Rep(
        contender=name,
        phase=phase,
        decision=ups[0] if ups else None,
        warm=warm_at[0] if warm_at else None,
        first=min(ok) if ok else None,
        last=max((t for t, _ in results), default=None) if not pending else None,
        errors=tl.burst - len(ok),
        replicas=replicas,
        scale_calls=scale_calls,
        polls=polls,
    )


async def run(args: argparse.Namespace) -> Path:
    tl = timeline(args.quick, getattr(args, "smoke", False))
    logs = LogDir("coldstart")
    say(
        f"coldstart: {', '.join(n for n, _ in tl.contenders)}; {tl.repetitions} repetitions "
        f"each; burst {tl.burst} at 0 replicas, cold start {fmt_s(tl.load_seconds)} s; "
        f"logs {logs.path}"
    )
    reps: dict[str, list[Rep]] = {}
    for ci, (name, period) in enumerate(tl.contenders):
        phases: list[float | None] = (
            [None] * tl.repetitions
            if period is None
            else list(poll_phases(period, tl.repetitions, args.seed * 1000 + ci))
        )
        reps[name] = []
        for i, phase in enumerate(phases):
            tag = f"{name.replace(' ', '')}-{i}"
            rep = await run_rep(tl, name, period, phase, logs, tag)
            reps[name].append(rep)
            where = "" if phase is None else f"first poll at {phase:.2f} s; "
            say(
                f"{name} #{i + 1}: {where}scale decision {_t(rep.decision)}, first warm "
                f"{_t(rep.warm)}, first response {_t(rep.first)}, last {_t(rep.last)}, "
                f"{rep.errors} errors, {rep.replicas} replicas"
            )
    return write_report(tl, reps, args.seed, args.out or RESULTS)


def _t(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f} s"
