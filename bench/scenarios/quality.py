"""Routing quality: the same Poisson trace against Envoy round robin, Envoy least request,
Celery, warmroute, and the ideal central FIFO queue (M/G/c, computed on the trace).

8 one-slot replicas; lognormal service times (median 200 ms, p99 2 s), carried per request
in ``x-sim-service-ms`` so every contender does identical work. Phases: 70 % and 90 % of
capacity, then a burst at 3x capacity; each phase starts on an idle system.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib import ideal, report, trace
from bench.lib.contenders import NAMES, make
from bench.lib.contenders.base import Backends
from bench.lib.loadgen import Client, Outcome, Progress, http_request, open_loop
from bench.lib.stats import Summary, fmt_ms
from bench.lib.util import RESULTS, LogDir, say

TARGET_RATIO = 1.1


@dataclass
class PhaseRun:
    """One contender on one phase."""

    latencies: list[float]  # seconds, successful requests only
    waits: list[float]  # latency minus the request's own service time, successful only
    errors: int
    full_hits: int
    sent: int
    max_lag: float = 0.0  # worst delay between a scheduled and an actual send
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, phase: trace.Phase, outcomes: list[Outcome], full_hits: int) -> PhaseRun:
        ok = [o for o in outcomes if o.ok]
        return cls(
            latencies=[o.latency for o in ok],
            waits=[o.latency - phase.requests[o.index].service_s for o in ok],
            errors=len(outcomes) - len(ok),
            full_hits=full_hits,
            sent=len(outcomes),
            max_lag=max((o.sent - o.scheduled for o in outcomes), default=0.0),
        )


def ideal_run(phase: trace.Phase, servers: int) -> PhaseRun:
    waits = ideal.fifo_waits(phase.arrivals, phase.services, servers)
    lat = [w + s for w, s in zip(waits, phase.services, strict=True)]
    return PhaseRun(lat, waits, 0, 0, len(lat))


async def run_contender(
    name: str,
    plan: trace.QualityPlan,
    phases: list[trace.Phase],
    logs: LogDir,
    quick: bool,
    pause: float = 0.5,
) -> dict[str, PhaseRun]:
    """Every phase against one contender, ``pause`` seconds of quiet between phases."""
    out: dict[str, PhaseRun] = {}
    async with make(name, Backends(plan.servers, 1), logs) as contender:
        client = Client("127.0.0.1", contender.port)
        try:
            for phase in phases:
                await contender.sims.reset()
                before = await _router_metrics(contender)
                payloads = [http_request("127.0.0.1", r.service_ms) for r in phase.requests]
                # Bounded: the trace's span plus time to drain the worst case.
                deadline = phase.duration + (60.0 if quick else 180.0)
                label = f"{name} {phase.name}"
                say(f"{label}: {len(payloads)} requests over {phase.duration:.1f} s")
                with Progress(label, len(payloads)) as progress:
                    outcomes = await open_loop(
                        client, [r.at for r in phase.requests], payloads.__getitem__,
                        timeout=deadline, deadline=deadline, progress=progress,
                    )  # fmt: skip
                stats = await contender.sims.stats()
                run = PhaseRun.of(phase, outcomes, sum(s["received_while_full"] for s in stats))
                after = await _router_metrics(contender)
                if before is not None and after is not None:
                    run.notes.append(_router_note(before, after))
                out[phase.name] = run
                p = Summary.of(run.latencies).scaled(1e3)
                say(
                    f"{label}: {run.sent - run.errors} ok, {run.errors} errors, "
                    f"{run.full_hits} hit a full replica, p50 {p.p50:.0f} ms, p99 {p.p99:.0f} ms"
                )
                await asyncio.sleep(pause)
        finally:
            client.close()
    return out


async def _router_metrics(contender: object) -> dict[str, float] | None:
    metrics = getattr(contender, "metrics", None)
    return await metrics() if metrics is not None else None


def _router_note(before: dict[str, float], after: dict[str, float]) -> str:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = delta("warmroute_queue_wait_seconds_count")
    wait = delta("warmroute_queue_wait_seconds_sum") / count * 1e3 if count else math.nan
    mismatch = delta("warmroute_upstream_mismatch_total")
    return f"own queue-wait metric {wait:.1f} ms mean; upstream mismatches {mismatch:.0f}"


async def run(args: argparse.Namespace) -> Path:
    plan = trace.quality_plan(args.quick, getattr(args, "smoke", False))
    phases = trace.quality_phases(plan, args.seed)
    skipped = getattr(args, "left_out", {})
    contenders = [name for name in args.contenders or NAMES if name not in skipped]
    logs = LogDir("quality")
    say(
        f"quality: {plan.servers} replicas x 1 slot; service lognormal median "
        f"{plan.service.median_ms:.0f} ms, sigma {plan.service.sigma:.3f} (p99 "
        f"{plan.service.quantile_ms(0.99):.0f} ms, mean {plan.service.mean_ms:.1f} ms); "
        f"capacity {plan.capacity:.2f} req/s; contenders {', '.join(contenders)}; logs {logs.path}"
    )
    results: dict[str, dict[str, PhaseRun]] = {}
    for name in contenders:
        pause = 0.0 if getattr(args, "smoke", False) else 0.5
        results[name] = await run_contender(name, plan, phases, logs, args.quick, pause)
    results["ideal (M/G/c)"] = {p.name: ideal_run(p, plan.servers) for p in phases}
    return write_report(plan, phases, results, args.seed, args.out or RESULTS)


def write_report(
    plan: trace.QualityPlan,
    phases: list[trace.Phase],
    results: dict[str, dict[str, PhaseRun]],
    seed: int,
    out_dir: Path,
) -> Path:
    title = "Routing quality: warmroute vs Kubernetes defaults and queue dispatch"
    lines = report.header(title, seed)
    lines += [
        f"{plan.servers} simulated replicas with 1 slot each (a request arriving at a busy "
        "replica is refused with 503, as a one-request GPU server would). Service time "
        f"lognormal, median {plan.service.median_ms:.0f} ms, sigma {plan.service.sigma:.3f} "
        f"(p99 {plan.service.quantile_ms(0.99):.0f} ms, mean {plan.service.mean_ms:.1f} ms), "
        "drawn once per request and sent in `x-sim-service-ms`, so every contender does the "
        f"same work. Capacity {plan.capacity:.2f} req/s. Open-loop arrivals: latency counts "
        "from each request's scheduled time.",
        "",
        "Contenders: **envoy-rr** / **envoy-lr**: Envoy 1.40, static cluster, `ROUND_ROBIN` / "
        "`LEAST_REQUEST` (power of two choices), no retries. **celery**: aiohttp front end "
        "enqueues a task on Redis and waits on `result.get()`; 1 worker per replica (solo pool, "
        "concurrency 1, `task_acks_late`, `worker_prefetch_multiplier=1`) calls its replica. "
        "**warmroute**: control plane + Envoy over ADS. **ideal**: one central FIFO queue, "
        f"{plan.servers} servers, zero overhead, computed on the same trace (M/G/c).",
        "",
        "Latency percentiles are over successful requests; `errors` counts every other answer "
        "(for envoy-rr/lr, chiefly the 503 of a full replica). `mean wait` is the mean of "
        "latency minus the request's own service time (queueing plus all overhead). "
        "`full` is the replicas' count of requests received while full.",
        "",
    ]
    rows = []
    verdicts = []
    ideal_key = "ideal (M/G/c)"
    for phase in phases:
        ideal_p99 = Summary.of(results[ideal_key][phase.name].latencies).p99
        for name, runs in results.items():
            run = runs[phase.name]
            s = Summary.of(run.latencies).scaled(1e3)
            w = Summary.of(run.waits).scaled(1e3)
            # A p99 over the requests that happened to succeed says nothing about the rest.
            ratio = s.p99 / (ideal_p99 * 1e3) if run.latencies and not run.errors else math.nan
            rows.append([
                phase.name, name, run.sent, run.sent - run.errors, run.errors, run.full_hits,
                fmt_ms(s.p50, 0), fmt_ms(s.p95, 0), fmt_ms(s.p99, 0), fmt_ms(w.mean, 1),
                f"{ratio:.2f}x" if not math.isnan(ratio) else "n/a (errors)",
            ])  # fmt: skip
            if name == "warmroute":
                verdicts.append((phase.name, s.p99 / (ideal_p99 * 1e3), run.full_hits, run.errors))
    lines += [
        report.table(
            [
                "phase",
                "contender",
                "sent",
                "ok",
                "errors",
                "full",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "mean wait ms",
                "p99 / ideal",
            ],
            rows,
        ),
        "",
        "Phases: " + "; ".join(f"**{p.name}**: {p.description}" for p in phases) + ".",
        "",
    ]
    if verdicts:
        lines += ["## Targets (warmroute)", ""]
        for phase_name, ratio, full, errors in verdicts:
            ok = ratio <= TARGET_RATIO
            lines.append(
                f"- {phase_name}: p99 {ratio:.2f}x ideal (target ≤ {TARGET_RATIO}x): "
                f"**{'met' if ok else 'missed'}**; requests on a full replica: {full} "
                f"(target 0: **{'met' if full == 0 else 'missed'}**); errors {errors}"
            )
        lines.append("")
    notes = [
        f"- {name} {phase}: {'; '.join(run.notes)}"
        for name, runs in results.items()
        for phase, run in runs.items()
        if run.notes
    ]
    lags = [run.max_lag for name, runs in results.items() for run in runs.values()]
    lines += [
        "## Notes",
        "",
        *notes,
        f"- load generator: worst delay of a send past its scheduled time {max(lags) * 1e3:.1f} ms "
        "(latency counts from the scheduled time, so such a delay is charged to the contender)",
        "",
    ]
    png = out_dir / "quality.png"
    try:
        report.plot_cdfs(
            png,
            [
                (p.name, {n: [v * 1e3 for v in r[p.name].latencies] for n, r in results.items()})
                for p in phases
            ],
            xlabel="end-to-end latency (ms, log scale)",
            suptitle="Latency CDF per phase (failed requests never arrive: their curve stays low)",
            totals={p.name: {n: r[p.name].sent for n, r in results.items()} for p in phases},
        )
        lines += [f"![latency CDFs]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("quality", lines, out_dir)
