"""Dispatch latency: how long a freed slot stays empty while requests are waiting.

One replica with one slot, service 20 ms, and many closed-loop clients, so the queue is
never empty. Measured at the replica itself: for consecutive requests, the next one's
arrival minus the previous one's completion (slot released). For warmroute that spans the
response reaching Envoy, the access-log entry reaching the control plane, the release,
the dispatch of the next waiter, ext_proc's answer and Envoy's upstream send. For Celery,
the worker storing the result and acking, fetching the next message from Redis, and
calling the replica.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib import report
from bench.lib.contenders import make
from bench.lib.contenders.base import Backends
from bench.lib.loadgen import Client, Outcome, Progress, closed_loop, http_request
from bench.lib.stats import Summary, fmt_ms
from bench.lib.util import RESULTS, LogDir, say

CONTENDERS = ("warmroute", "celery")
SERVICE_MS = 20.0
CLIENTS = 16
TARGET_P99_MS = 2.0


STAGES = (
    "response to Envoy, access-log entry to the control plane",
    "release + dispatch to the next waiter, in the control plane",
    "ext_proc answer to Envoy, Envoy to the replica",
)


@dataclass
class DispatchRun:
    outcomes: list[Outcome]
    gaps: list[float]  # seconds
    span: float  # first arrival to last completion at the replica, seconds
    served: int
    full_hits: int
    stages: list[list[float]] = field(default_factory=list)  # per STAGES entry, seconds

    @property
    def throughput(self) -> float:
        return self.served / self.span if self.span else 0.0


def gaps_of(timings: list[tuple[float, float]], skip: int) -> tuple[list[float], float]:
    """Idle gaps between consecutive requests of a one-slot replica, after ``skip`` warm
    ones (the queue is still filling), and the span of the rest."""
    ordered = sorted(timings)[skip:]
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(ordered)]
    span = ordered[-1][1] - ordered[0][0] if ordered else 0.0
    return gaps, span


def split_gaps(
    timings: list[tuple[float, float]], skip: int, released: list[float], routed: list[float]
) -> list[list[float]]:
    """Cut each gap at the control plane's two timestamps (see STAGES): the first access-log
    entry after the previous completion, then the first ext_proc answer after it. Gaps
    whose stamps do not fall inside them are left out."""
    ordered = sorted(timings)[skip:]
    released, routed = sorted(released), sorted(routed)
    out: list[list[float]] = [[], [], []]
    for (_, done), (arrived, _) in itertools.pairwise(ordered):
        i = bisect.bisect_left(released, done)
        if i == len(released) or released[i] > arrived:
            continue
        j = bisect.bisect_left(routed, released[i])
        if j == len(routed) or routed[j] > arrived:
            continue
        out[0].append(released[i] - done)
        out[1].append(routed[j] - released[i])
        out[2].append(arrived - routed[j])
    return out


def check_stamps(released: list[float], routed: list[float], served: int) -> None:
    """The control plane's stamps must cover the requests served: ``bench.lib.serve`` hooks
    warmroute's request path from outside, and a change there must fail loudly here rather
    than leave the stage table empty."""
    if min(len(released), len(routed)) < served // 2:  # the last entries may be in flight
        raise RuntimeError(
            f"--stamps saw {len(released)} access-log entries and {len(routed)} ext_proc "
            f"answers for {served} requests served: bench/lib/serve.py's _stamp_request_path no "
            "longer sees warmroute's request path"
        )


async def run_contender(name: str, total: int, quick: bool, logs: LogDir) -> DispatchRun:
    contender = make(name, Backends(1, 1), logs)
    if name == "warmroute":
        contender.plane_args = ["--stamps"]  # type: ignore[attr-defined]
    stamps: tuple[list[float], list[float]] | None = None
    async with contender as c:
        client = Client("127.0.0.1", c.port)
        label = f"{name}: {CLIENTS} clients"
        say(f"{label}, {total} requests of {SERVICE_MS:g} ms on 1 replica x 1 slot")
        try:
            with Progress(label, total) as progress:
                outcomes = await closed_loop(
                    client, CLIENTS, total, http_request("127.0.0.1", SERVICE_MS),
                    timeout=60.0, deadline=60.0 if quick else 240.0, progress=progress,
                )  # fmt: skip
        finally:
            client.close()
        timings = [(a, d) for a, d in (await c.sims.timings())[0]]
        stats = (await c.sims.stats())[0]
        if hasattr(c, "stamps"):
            stamps = await c.stamps()
    gaps, span = gaps_of(timings, skip=CLIENTS)
    run = DispatchRun(outcomes, gaps, span, len(timings) - CLIENTS, stats["received_while_full"])
    if stamps is not None:
        check_stamps(*stamps, served=len(timings))
        run.stages = split_gaps(timings, CLIENTS, *stamps)
    g = Summary.of(gaps).scaled(1e3)
    say(
        f"{name}: {len(outcomes)} answered ({sum(not o.ok for o in outcomes)} errors), "
        f"{len(gaps)} gaps: p50 {g.p50:.2f} ms, p99 {g.p99:.2f} ms, max {g.max:.2f} ms; "
        f"{run.throughput:.1f} req/s"
    )
    return run


def total_requests(quick: bool, smoke: bool = False) -> int:
    if smoke:
        return CLIENTS + 40  # the first CLIENTS are left out (queue filling)
    return 300 if quick else 2000


async def run(args: argparse.Namespace) -> Path:
    total = total_requests(args.quick, getattr(args, "smoke", False))
    skipped = getattr(args, "left_out", {})
    contenders = [name for name in CONTENDERS if name not in skipped]
    logs = LogDir("dispatch")
    say(f"dispatch: {', '.join(contenders)}; logs {logs.path}")
    results = {name: await run_contender(name, total, args.quick, logs) for name in contenders}
    return write_report(results, args.seed, args.out or RESULTS)


def write_report(results: dict[str, DispatchRun], seed: int, out_dir: Path) -> Path:
    lines = report.header("Dispatch latency: a freed slot to the next waiting request", seed)
    lines += [
        f"1 simulated replica, 1 slot, service {SERVICE_MS:g} ms (`x-sim-service-ms`), "
        f"{CLIENTS} closed-loop clients, so {CLIENTS - 1} requests are always waiting. "
        "Measured at the replica: the next request's arrival (its handler starts) minus the "
        "previous request's completion (its slot is released, before the response is "
        f"written). The first {CLIENTS} requests (queue filling) are left out. "
        f"Ideal throughput {1000 / SERVICE_MS:g} req/s.",
        "",
        "**warmroute**: Envoy + control plane; the slot is released when Envoy's access-log "
        "entry arrives and the next waiter is answered in the same step (push). **celery**: "
        "front end enqueues on Redis; 1 worker (solo pool, `task_acks_late`, prefetch 1) "
        "calls the replica.",
        "",
    ]
    rows = []
    for name, r in results.items():
        g = Summary.of(r.gaps).scaled(1e3)
        lat = Summary.of([o.latency for o in r.outcomes if o.ok]).scaled(1e3)
        rows.append([
            name, len(r.gaps), fmt_ms(g.p50, 2), fmt_ms(g.p95, 2), fmt_ms(g.p99, 2),
            fmt_ms(g.max, 2), fmt_ms(g.mean, 2), f"{r.throughput:.1f}",
            f"{r.throughput * SERVICE_MS / 1000:.1%}", fmt_ms(lat.p50, 0), fmt_ms(lat.p99, 0),
            sum(not o.ok for o in r.outcomes), r.full_hits,
        ])  # fmt: skip
    lines += [
        report.table(
            ["contender", "gaps", "gap p50 ms", "gap p95 ms", "gap p99 ms", "gap max ms",
             "gap mean ms", "served req/s", "slot busy", "client p50 ms", "client p99 ms",
             "errors", "full"],
            rows,
        ),
        "",
        "## Target",
        "",
    ]  # fmt: skip
    if "warmroute" in results:
        p99 = Summary.of(results["warmroute"].gaps).p99 * 1e3
        verdict = "met" if p99 <= TARGET_P99_MS else "missed"
        lines.append(
            f"- warmroute gap p99 {p99:.2f} ms (target ≤ {TARGET_P99_MS:g} ms): **{verdict}**"
        )
    if "celery" in results and "warmroute" in results:
        a = Summary.of(results["warmroute"].gaps).p50
        b = Summary.of(results["celery"].gaps).p50
        if a:
            lines.append(f"- Celery's median gap is {b / a:.1f}x warmroute's")
    lines.append("")
    stages = results.get("warmroute")
    if stages is not None and stages.stages and stages.stages[0]:
        lines += [
            "## Where warmroute's gap goes",
            "",
            "Each gap cut at two instants taken inside the control plane (`bench.lib.serve plane "
            "--stamps` wraps the access-log handler and the ext_proc answer; all processes "
            f"share CLOCK_MONOTONIC). {len(stages.stages[0])} of {len(stages.gaps)} gaps "
            "matched.",
            "",
            report.table(
                ["stage", "p50 ms", "p99 ms", "mean ms"],
                [
                    [stage, fmt_ms(v.p50, 2), fmt_ms(v.p99, 2), fmt_ms(v.mean, 2)]
                    for stage, v in (
                        (st, Summary.of(vals).scaled(1e3))
                        for st, vals in zip(STAGES, stages.stages, strict=True)
                    )
                ],
            ),
            "",
        ]
    png = out_dir / "dispatch.png"
    try:
        report.plot_cdfs(
            png,
            [("slot idle gap", {n: [g * 1e3 for g in r.gaps] for n, r in results.items()})],
            xlabel="gap: previous completion to next arrival (ms, log scale)",
            ylabel="fraction of gaps ≤ x",
        )
        lines += [f"![dispatch gap CDF]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("dispatch", lines, out_dir)
