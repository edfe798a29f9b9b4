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
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lib import report
from bench.lib.child import output_to
from bench.lib.ideal import fifo_latencies
from bench.lib.loadgen import Client, Outcome, Progress, http_request, open_loop
from bench.lib.stats import percentile
from bench.lib.trace import Lognormal, Request, phase_seed
from bench.lib.util import MODEL, RESULTS, LogDir, free_port, free_ports, say

POOL = "main"


@dataclass(frozen=True, slots=True)
class Plan:
    bursts: tuple[int, ...]  # requests per burst, in order
    gap: float  # seconds between the starts of two bursts
    spread: float  # a burst's arrivals are a Poisson stream over about this long
    service: Lognormal = field(default_factory=lambda: Lognormal(200.0, 0.5))
    load_seconds: float = 3.0
    slots: int = 2
    min_replicas: int = 2
    max_replicas: int = 6
    idle_seconds: float = 4.0
    queue_timeout: float = 60.0
    warmup_requests: int = 8  # sequential, before the trace: a service time to learn

    @property
    def contenders(self) -> list[tuple[str, str | None]]:
        """(name, autoscale mode; None: no scaling)."""
        return [("predictive", "predictive"), ("every_wait", "every_wait"), ("no scaling", None)]


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:  # one short burst, fast replicas: seconds per contender
        return Plan(bursts=(8,), gap=1.0, spread=0.2, service=Lognormal(50.0, 0.5),
                    load_seconds=0.3, min_replicas=1, max_replicas=2, idle_seconds=1.0,
                    queue_timeout=20.0, warmup_requests=2)  # fmt: skip
    if quick:
        return Plan(bursts=(12, 120, 12), gap=10.0, spread=0.5)
    return Plan(bursts=(12, 40, 12, 120, 12, 40, 120, 12), gap=12.0, spread=0.5)


# -- pure parts (tests/unit/test_bench_predictive.py) --------------------------------------


def bursty_trace(p: Plan, seed: int) -> list[Request]:
    """The trace: burst ``i`` starts at ``i * gap``; its requests arrive as a Poisson stream
    of ``size / spread`` per second; each has a lognormal service time. Sorted by arrival."""
    out: list[Request] = []
    for i, size in enumerate(p.bursts):
        rng = random.Random(phase_seed(seed, i))
        t = i * p.gap
        rate = size / p.spread
        for _ in range(size):
            out.append(Request(round(t, 6), round(p.service.sample_ms(rng), 3)))
            t += rng.expovariate(rate)
    out.sort(key=lambda r: r.at)
    return out


def replica_seconds(steps: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """The integral over [start, end] of a replica count that changes at ``steps`` (time,
    count after it), sorted by time; before the first step the count is 0."""
    if end <= start:
        return 0.0
    total, count, at = 0.0, 0, start
    for t, n in steps:
        if t > start:
            total += count * (min(t, end) - at)
            at = min(t, end)
        if t >= end:
            return total
        count = n
    return total + count * (end - at)


def summarize(latencies: Sequence[float]) -> tuple[float, float, float]:
    """p50, p99 and max of the latencies (seconds), NaN if there are none."""
    if not latencies:
        return math.nan, math.nan, math.nan
    return percentile(latencies, 50), percentile(latencies, 99), max(latencies)


@dataclass
class Run:
    """One contender's run; times in seconds from the trace's start."""

    name: str
    outcomes: list[Outcome]
    steps: list[tuple[float, int]]  # (t, replicas after a scale call)
    end: float  # end of the replica-seconds window
    forecast: dict[str, Any] | None = None
    decisions: list[str] = field(default_factory=list)

    @property
    def ok_latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def rejected(self) -> int:
        return sum(o.status == 503 for o in self.outcomes)

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    @property
    def replica_seconds(self) -> float:
        return replica_seconds(self.steps, 0.0, self.end)

    @property
    def scale_ups(self) -> int:
        return sum(1 for a, b in zip(self.steps, self.steps[1:], strict=False) if b[1] > a[1])


# -- running it ----------------------------------------------------------------------------


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


def _c(v: float, digits: int = 3) -> str:
    return "—" if math.isnan(v) else f"{v:.{digits}f}"


def write_report(p: Plan, trace: list[Request], runs: list[Run], seed: int, out_dir: Path) -> Path:
    arrivals = [r.at for r in trace]
    services = [r.service_s for r in trace]
    ideal = {
        c: fifo_latencies(arrivals, services, c * p.slots) for c in (p.min_replicas, p.max_replicas)
    }
    lines = report.header("Wait warm or start cold: predictive scaling on a bursty trace", seed)
    lines += [
        f"{len(trace)} requests in {len(p.bursts)} bursts of {', '.join(map(str, p.bursts))} "
        f"requests, {p.gap:g} s apart (each a Poisson stream over ~{p.spread:g} s); service "
        f"lognormal, median {p.service.median_ms:g} ms, sigma {p.service.sigma:g} (mean "
        f"{p.service.mean_ms:.0f} ms), sent with each request. Replicas: `warmroute.sim` "
        f"processes with {p.slots} slots, warm {p.load_seconds:g} s after they start "
        f"(`simulate.load_seconds`; process start-up on top), started and stopped by the "
        f"`LocalScaler`; {p.min_replicas} warm before the trace, at most {p.max_replicas}; "
        f"`idle_seconds: {p.idle_seconds:g}` (scale back to {p.min_replicas} after that "
        f"long idle); `cold_start_seconds: {p.load_seconds + 1:g}` as prior (measured on the "
        f"first replicas before the trace). Control plane in the benchmark process, real "
        f"Envoy over ADS, open-loop client (latency from each request's scheduled arrival), "
        f"queue timeout {p.queue_timeout:g} s, {p.warmup_requests} sequential warm-up "
        "requests before the trace so a service time is learned.",
        "",
        "*replica-seconds*: replicas running (started, not yet stopped), integrated from the "
        "first arrival until the pool is back at its minimum after the last answer (at most "
        "`idle_seconds` + 5 s later). The ideal rows are the M/G/c FIFO queue on the same "
        "arrivals and service times with that many replicas warm all along, no overhead and "
        "no cold start; their replica-seconds run to the ideal's last answer.",
        "",
    ]
    rows: list[list[object]] = []
    for r in runs:
        lat = summarize(r.ok_latencies)
        rows.append([
            r.name, len(r.outcomes), _c(lat[0]), _c(lat[1]), _c(lat[2]), r.rejected,
            r.errors - r.rejected, f"{r.replica_seconds:.1f}", r.scale_ups, f"{r.end:.1f}",
        ])  # fmt: skip
    for c, lats in ideal.items():
        lat = summarize(lats)
        end = max(a + lt for a, lt in zip(arrivals, lats, strict=True))
        rows.append([
            f"ideal, {c} replicas warm", len(lats), _c(lat[0]), _c(lat[1]), _c(lat[2]), 0, 0,
            f"{c * end:.1f}", 0, f"{end:.1f}",
        ])  # fmt: skip
    lines += [
        report.table(
            ["contender", "requests", "p50 s", "p99 s", "max s", "503", "other errors",
             "replica-seconds", "scale-ups", "window s"],
            rows,
        ),
        "",
    ]  # fmt: skip
    lines += ["## What each pool learned, and why it scaled", ""]
    for r in runs:
        f = r.forecast or {}
        mean, p90, cold = f.get("service_mean"), f.get("service_p90"), f.get("cold_start")
        learned = (
            f"service mean {mean * 1e3:.0f} ms, p90 {p90 * 1e3:.0f} ms; cold start "
            f"{cold:.2f} s (median of {f.get('cold_starts')})"
            if mean is not None and p90 is not None and cold is not None
            else "nothing measured"
        )
        lines.append(f"- **{r.name}**: {learned}; scale calls (t s → replicas): " + (
            ", ".join(f"{t:.2f}→{n}" for t, n in r.steps[1:]) or "none"
        ))  # fmt: skip
        for d in r.decisions[:6]:
            lines.append(f"  - {d}")
        if len(r.decisions) > 6:
            lines.append(f"  - … {len(r.decisions) - 6} more scale-up decisions")
    lines.append("")
    png = out_dir / "predictive.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        _plot(png, p, trace, runs, ideal)
        lines += [f"![latency CDF and replicas over time]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("predictive", lines, out_dir)


def _plot(
    png: Path, p: Plan, trace: list[Request], runs: list[Run], ideal: dict[int, list[float]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        xs = sorted(r.ok_latencies)
        if xs:
            left.plot(xs, [(i + 1) / len(r.outcomes) for i in range(len(xs))], label=r.name)
    for c, lats in ideal.items():
        xs = sorted(lats)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        left.plot(xs, ys, linestyle=":", label=f"ideal, {c} warm")
    left.set_xscale("log")
    left.set_xlabel("latency, seconds (log)")
    left.set_ylabel("fraction of requests answered OK within x")
    left.set_title("latency")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    for r in runs:
        ts = [t for t, _ in r.steps] + [r.end]
        ns = [n for _, n in r.steps] + [r.steps[-1][1]]
        right.step(ts, ns, where="post", label=f"{r.name} ({r.replica_seconds:.0f} replica-s)")
    for i in range(len(p.bursts)):
        right.axvline(i * p.gap, color="grey", alpha=0.2)
    right.set_xlabel("seconds from the first arrival (grey: burst starts)")
    right.set_ylabel("replicas running")
    right.set_title("replicas over time")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"bursts {p.bursts}, cold start {p.load_seconds:g} s")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
