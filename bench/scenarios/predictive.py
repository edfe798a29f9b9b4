"""Wait warm or start cold: a bursty trace over a pool whose replicas take seconds to load.

Each contender gets a fresh control plane (in this process), a real Envoy over ADS and
simulated replicas started as local processes by the ``LocalScaler`` (``load_seconds`` of
cold start each). The pool keeps ``min_replicas`` warm; then one seeded trace of bursts,
small and large, replays identically against:

* ``predictive``: ``autoscale.mode: predictive``: a replica starts only when it would serve
  the last waiter sooner than the warm ones (learned service time against the measured cold
  start) or that waiter would time out;
* ``every_wait``: one replica per waiter that capacity on its way does not cover (what the
  autoscaler did before);
* ``no scaling``: ``min_replicas = max_replicas``: the warm replicas alone.

Measured: latency of every request from its scheduled arrival (open loop), 503s and other
errors, and **replica-seconds**: the integral of the replicas running (started and not yet
stopped by the scaler) from the first arrival until the pool is back at its minimum after
the last answer (or ``idle_seconds`` + 5 s, whichever comes first), so replicas started
late are paid for. The ideal is the M/G/c FIFO queue on the trace's exact arrivals and
service times with the minimum, and with the maximum, of replicas warm all along.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

from bench.lib.child import output_to
from bench.lib.loadgen import Client, Progress, http_request, open_loop
from bench.lib.trace import Request
from bench.lib.util import MODEL, RESULTS, LogDir, free_port, free_ports, say
from bench.scenarios.predictive_plan import POOL, Plan, Run, bursty_trace, plan, summarize
from bench.scenarios.predictive_report import write_report


def plane_config(p: Plan, mode: str | None) -> dict[str, Any]:
    top = p.max_replicas if mode is not None else p.min_replicas
    return {
        "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "pools": [{
            "name": POOL, "models": [MODEL], "slots": p.slots,
            "queue": {"max_waiting": 10_000, "timeout_seconds": p.queue_timeout},
            "probe": {"path": "/health", "interval_seconds": 0.05},
            "simulate": {
                "replicas": 0, "base_port": free_ports(p.max_replicas),
                "load_seconds": p.load_seconds, "distribution": "fixed", "median_ms": 200.0,
            },
            "autoscale": {
                "min_replicas": p.min_replicas, "max_replicas": top,
                "idle_seconds": p.idle_seconds, "mode": mode or "every_wait",
                # A prior near the truth; the pool measures its own cold starts anyway
                # (the first replicas' load) before the trace starts.
                "cold_start_seconds": p.load_seconds + 1.0,
            },
        }],
    }  # fmt: skip


async def _until(check: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run_one(p: Plan, name: str, mode: str | None, trace: list[Request], logs: LogDir) -> Run:
    from warmroute.config import Config
    from warmroute.envoy_process import EnvoyProcess
    from warmroute.server import ControlPlane
    from warmroute.state import Phase
    from warmroute.xds.bootstrap import ads_bootstrap, to_json

    tag = name.replace(" ", "")
    cfg = Config.model_validate(plane_config(p, mode))
    plane = ControlPlane(cfg)
    loop = asyncio.get_running_loop()
    t0 = math.inf
    steps: list[tuple[float, int]] = []
    spawn = plane.local_scaler.set_replicas
    replicas_log = logs.file(f"{tag}-replicas")

    async def recorded(pool: Any, replicas: int) -> None:
        with output_to(replicas_log):
            await spawn(pool, replicas)
        steps.append((loop.time() - t0, replicas))

    plane.local_scaler.set_replicas = recorded  # type: ignore[method-assign]
    decisions: list[str] = []
    await plane.start()
    envoy = EnvoyProcess(
        to_json(ads_bootstrap(cfg, node_id="bench-envoy", variant="sotw")),
        cfg.envoy.admin,
        log_level="warning",
        log_path=str(logs.file(f"{tag}-envoy")),
    )
    client = Client("127.0.0.1", int(cfg.envoy.listen.rpartition(":")[2]))
    pool = plane.registry.pools[POOL]
    try:
        await envoy.start()
        await _until(
            lambda: sum(r.phase is Phase.WARM for r in pool.replicas.values()) >= p.min_replicas,
            60.0,
            f"{p.min_replicas} warm replicas",
        )
        warm = http_request("127.0.0.1", p.service.median_ms)
        for _ in range(p.warmup_requests):
            status = await client.request(warm, 30.0)
            if not 200 <= status < 300:
                raise RuntimeError(f"warm-up request answered {status}")
        # The trace starts now; what ran before is the starting count.
        t0 = loop.time() + 0.02
        steps[:] = [(0.0, await plane.local_scaler.get_replicas(cfg.pools[0]))]
        last_seen: Any = None

        async def watch() -> None:
            nonlocal last_seen
            while True:
                last = pool.forecast.last
                if last is not None and last is not last_seen:
                    last_seen = last
                    if last.scale_up:
                        decisions.append(
                            f"{loop.time() - t0:.2f} s: +{last.scale_up}: {last.reason}"
                        )
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        with Progress(name, len(trace)) as progress:
            outcomes = await open_loop(
                client,
                [r.at for r in trace],
                lambda i: http_request("127.0.0.1", trace[i].service_ms),
                timeout=p.queue_timeout + 30,
                deadline=trace[-1].at + p.queue_timeout + 30,
                progress=progress,
            )
        # Pay for what is still running until the pool is back at its minimum.
        with contextlib.suppress(RuntimeError):  # not back at min: pay until now
            await _until(
                lambda: bool(steps) and steps[-1][1] <= p.min_replicas,
                p.idle_seconds + 5.0,
                "scale-down",
            )
        end = loop.time() - t0
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        view = plane.registry.view().pools[0].forecast
        forecast = None if view is None else {
            "service_mean": view.service_mean, "service_p90": view.service_p90,
            "cold_start": view.cold_start, "cold_starts": view.cold_starts,
        }  # fmt: skip
    finally:
        client.close()
        await envoy.stop()
        await plane.stop()
    return Run(name, outcomes, steps, end, forecast, decisions)


async def run(args: argparse.Namespace) -> Path:
    p = plan(args.quick, getattr(args, "smoke", False))
    trace = bursty_trace(p, args.seed)
    logs = LogDir("predictive")
    say(
        f"predictive: {len(trace)} requests in {len(p.bursts)} bursts {p.bursts}, "
        f"cold start {p.load_seconds:g} s, {p.min_replicas}..{p.max_replicas} replicas x "
        f"{p.slots} slots; logs {logs.path}"
    )
    runs = []
    for name, mode in p.contenders:
        r = await run_one(p, name, mode, trace, logs)
        lat = summarize(r.ok_latencies)
        say(
            f"{name}: p50 {lat[0]:.3f} s, p99 {lat[1]:.3f} s, {r.errors} errors, "
            f"{r.replica_seconds:.1f} replica-s, {r.scale_ups} scale-ups"
        )
        runs.append(r)
    return write_report(p, trace, runs, args.seed, args.out or RESULTS)
