"""Overhead: what warmroute adds over plain Envoy when replicas answer at once.

4 replicas x 1000 slots, service 0 ms: no request ever waits for a slot, so any difference
is warmroute's own cost (ext_proc round trip, lease, access-log release). Fixed open-loop
rates with this package's generator (``bench.lib.loadgen``), saturation with wrk, then a pass
at a fixed rate with cProfile on in the control plane.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from bench.lib import wrk
from bench.lib.contenders import make
from bench.lib.contenders.base import Contender
from bench.lib.measure import RateRun, cpu_by_role, cpu_seconds, fixed_rate, plane_pid, processes
from bench.lib.stats import Summary
from bench.lib.util import RESULTS, LogDir, say
from bench.scenarios.overhead_plan import BACKENDS, PLAIN, ROUTED, Plan, plan
from bench.scenarios.overhead_report import write_report


async def measure_rate(c: Contender, rate: int, p: Plan, seed: int) -> RateRun:
    """Warm up at ``rate``, then measure it: latencies, CPU per process, GC pauses."""
    await fixed_rate(c, rate, p.warm_seconds, seed + 1, f"{c.name} {rate}/s warm-up")
    gc_pauses = getattr(c, "gc_pauses", None)
    if gc_pauses is not None:
        await gc_pauses(clear=True)
    roles = processes(c)
    cpu0, t0 = cpu_by_role(roles), time.monotonic()
    outcomes = await fixed_rate(c, rate, p.seconds, seed, f"{c.name} {rate}/s")
    cpu1, t1 = cpu_by_role(roles), time.monotonic()
    run = RateRun(rate, outcomes, {r: cpu1[r] - cpu0[r] for r in roles}, t1 - t0)
    if gc_pauses is not None:
        run.gc = await gc_pauses()
    s = Summary.of(run.latencies).scaled(1e3)
    say(
        f"{c.name} {rate}/s: {len(outcomes)} sent, {run.errors} errors, achieved "
        f"{run.achieved:.0f}/s, p50 {s.p50:.2f} ms, p99 {s.p99:.2f} ms"
    )
    return run


async def run_contender(
    name: str, p: Plan, seed: int, logs: LogDir
) -> tuple[list[RateRun], wrk.WrkResult | None, dict[str, Any]]:
    """Fixed rates, then (unless ``p.wrk_seconds`` is 0) saturation with wrk."""
    extra: dict[str, Any] = {}
    async with make(name, BACKENDS, logs) as c:
        router = c if name == ROUTED else None
        before = await router.metrics() if router else None  # type: ignore[attr-defined]
        heap0 = await router.heap() if router else None  # type: ignore[attr-defined]
        runs = [await measure_rate(c, rate, p, seed) for rate in p.rates]
        sat = None
        if p.wrk_seconds:
            say(f"{name} saturation: wrk for {p.wrk_seconds} s")
            pid = plane_pid(c)
            cpu0 = cpu_seconds(pid) if pid else 0.0
            sat = await wrk.run(c.port, p.wrk_seconds)
            if pid:
                extra["wrk_plane_cpu_s"] = cpu_seconds(pid) - cpu0
            say(
                f"{name} saturation: {sat.rate:.0f} req/s ({sat.non_2xx} non-2xx, "
                f"{sat.socket_errors} socket errors), p50 {sat.p50_ms:.2f} ms, "
                f"p99 {sat.p99_ms:.2f} ms"
            )
        extra["full_hits"] = sum(s["received_while_full"] for s in await c.sims.stats())
        if router is not None and before is not None:
            after = await router.metrics()  # type: ignore[attr-defined]
            extra["metrics"] = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            extra["heap"] = (heap0, await router.heap())  # type: ignore[attr-defined]
            extra["profile"] = await profile(router, p, seed, logs)
    return runs, sat, extra


async def profile(c: Any, p: Plan, seed: int, logs: LogDir) -> dict[str, Any]:
    path = logs.path / "plane.prof"
    say(f"{c.name}: profiling the control plane at {p.profile_rate}/s for {p.profile_seconds} s")
    await c.profile_start()
    try:
        outcomes = await fixed_rate(c, p.profile_rate, p.profile_seconds, seed + 2, "profiled")
    finally:
        prof = await c.profile_stop(str(path))
    prof["requests"] = sum(o.ok for o in outcomes)
    prof["path"] = str(path)
    return prof


async def run(args: argparse.Namespace) -> Path:
    p = plan(args.quick, getattr(args, "smoke", False))
    if "wrk" in getattr(args, "left_out", {}):
        p = dataclasses.replace(p, wrk_seconds=0)
    logs = LogDir("overhead")
    say(
        f"overhead: {BACKENDS.replicas} replicas x {BACKENDS.slots} slots, service 0 ms; rates "
        f"{', '.join(map(str, p.rates))}/s for {p.seconds:g} s each, wrk {p.wrk_seconds} s; "
        f"logs {logs.path}"
    )
    results = {name: await run_contender(name, p, args.seed, logs) for name in (PLAIN, ROUTED)}
    return write_report(p, results, args.seed, args.out or RESULTS)
