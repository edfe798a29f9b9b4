"""Overhead: what warmroute adds over plain Envoy when replicas answer at once.

4 replicas x 1000 slots, service 0 ms: no request ever waits for a slot, so any difference
is warmroute's own cost (ext_proc round trip, lease, access-log release). Fixed open-loop
rates with this package's generator (``bench.lib.loadgen``), saturation with wrk, then a pass
at a fixed rate with cProfile on in the control plane.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lib import trace, wrk
from bench.lib.contenders import make
from bench.lib.contenders.base import Backends, Contender
from bench.lib.loadgen import Client, Outcome, Progress, http_request, open_loop
from bench.lib.stats import Summary
from bench.lib.util import RESULTS, LogDir, say

PLAIN, ROUTED = "envoy-rr", "warmroute"
LABELS = {PLAIN: "plain Envoy", ROUTED: "Envoy + warmroute"}
RATES = (200, 500, 1000, 2000)
BACKENDS = Backends(replicas=4, slots=1000, procs=2)
TARGET_P50_MS, TARGET_P99_MS, TARGET_RATE = 1.0, 3.0, 2000.0


@dataclass(frozen=True)
class Plan:
    seconds: float  # measured, per rate
    warm_seconds: float  # sent first at the same rate, not measured
    wrk_seconds: int  # 0: no saturation step (wrk left out)
    profile_rate: int
    profile_seconds: float
    rates: tuple[int, ...] = RATES


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:
        return Plan(seconds=0.5, warm_seconds=0.2, wrk_seconds=1, profile_rate=200,
                    profile_seconds=0.5, rates=(200,))  # fmt: skip
    if quick:
        return Plan(seconds=3.0, warm_seconds=1.0, wrk_seconds=5, profile_rate=500,
                    profile_seconds=3.0)  # fmt: skip
    return Plan(seconds=15.0, warm_seconds=2.0, wrk_seconds=15, profile_rate=500,
                profile_seconds=10.0)  # fmt: skip


@dataclass
class RateRun:
    rate: int
    outcomes: list[Outcome]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process role
    seconds: float = 0.0  # wall time of the measured part
    gc: list[tuple[int, float, float]] = field(default_factory=list)  # (gen, wall s, CPU s)

    @property
    def latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    @property
    def achieved(self) -> float:
        span = max((o.done for o in self.outcomes), default=0.0)
        return len(self.outcomes) / span if span else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fixed_rate(
    contender: Contender,
    rate: int,
    seconds: float,
    seed: int,
    label: str,
    payload: bytes | None = None,
) -> list[Outcome]:
    """Open-loop requests at ``rate``/s; ``payload`` is the raw HTTP request (default: a
    header-routed request the replica answers at once)."""
    offsets = trace.fixed_rate_offsets(rate, seconds, random.Random(seed * 100_003 + rate))
    if payload is None:
        payload = http_request("127.0.0.1", 0.0)
    client = Client("127.0.0.1", contender.port)
    try:
        with Progress(label, len(offsets)) as progress:
            return await open_loop(
                client, offsets, lambda _: payload,
                timeout=10.0, deadline=seconds + 15.0, progress=progress,
            )  # fmt: skip
    finally:
        client.close()


def processes(contender: Contender) -> dict[str, list[int]]:
    """Our processes by role, for CPU accounting."""
    roles: dict[str, list[int]] = {"load generator": [os.getpid()]}
    envoy = getattr(contender, "envoy", None)
    if envoy is not None and envoy.proc is not None:
        roles["Envoy"] = [envoy.proc.pid]
    roles["replicas"] = [ch.proc.pid for ch in contender.sims.children if ch.proc is not None]
    pid = _plane_pid(contender)
    if pid:
        roles["control plane"] = [pid]
    return roles


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(p) for p in pids) for role, pids in roles.items()}


def _plane_pid(contender: Contender) -> int | None:
    plane = getattr(contender, "plane", None)
    return plane.proc.pid if plane is not None and plane.proc is not None else None


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
            pid = _plane_pid(c)
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
    import dataclasses

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
    from bench.scenarios.overhead_report import write_report

    return write_report(p, results, args.seed, args.out or RESULTS)
