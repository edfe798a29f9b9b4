"""The coldstart scenario's results page: scale decision, first warm replica, first and
last response per contender, against the 1 s target; every repetition; CDF plot."""

from __future__ import annotations

import math
from pathlib import Path

from bench.lib import report
from bench.scenarios.coldstart_plan import TARGET_DECISION_S, Rep, Timeline, fmt_s, median_and_worst


def _first_poll(rep: Rep) -> str:
    if rep.phase is None:
        return "—"
    if not rep.polls:
        return f"{rep.phase:.2f}"
    return f"{rep.phase:.2f} ({rep.polls[0][1]:g} waiting)"


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def write_report(tl: Timeline, reps: dict[str, list[Rep]], seed: int, out_dir: Path) -> Path:
    lines = report.header("Cold start: a burst at zero replicas", seed)
    quick = tl.scale != 1.0
    lines += [
        f"A burst of {tl.burst} requests at t = 0 on a pool with **0 replicas** (max "
        f"{tl.max_replicas}, {tl.slots} slot each). A replica is a `warmroute.sim` process "
        f"started by the `LocalScaler`, warm {fmt_s(tl.load_seconds)} s after it starts "
        f"(`simulate.load_seconds`; process start-up comes on top); warm probe every 50 ms; "
        f"each request takes {fmt_s(tl.service_ms)} ms. Control plane in the benchmark process, "
        f"real Envoy over ADS, queue timeout {fmt_s(tl.queue_timeout)} s; a fresh stack per "
        f"repetition, {tl.repetitions} repetitions per contender.",
        "",
    ]
    if quick:
        lines += [
            f"**`--quick`: the timeline is scaled by {tl.scale:g}**: poll periods "
            f"{' and '.join(fmt_s(p) for p in tl.poll_periods)} s stand for 15 and 30 s, the cold "
            f"start {fmt_s(tl.load_seconds)} s for 3 s, service {fmt_s(tl.service_ms)} ms for 1 s. "
            "Process start-up (Python imports; see *decision → first warm* below) is not "
            "scaled, so it weighs 10x more than in the default run.",
            "",
        ]
    lines += [
        "| contender | how it scales |",
        "| --- | --- |",
        "| warmroute | pool `autoscale: {min_replicas: 0, max_replicas: "
        f"{tl.max_replicas}}}`: the first request that waits wakes the autoscaler (push), "
        "one replica per uncovered waiter |",
        *(
            f"| poll {fmt_s(p)} s | no `autoscale`; a poller reads `warmroute_requests_waiting` "
            f"from `/metrics` every {fmt_s(p)} s (like KEDA's Prometheus scaler) and sets "
            f"`ceil(waiting / slots)` replicas, max {tl.max_replicas}; its phase is drawn per "
            "repetition |"
            for p in tl.poll_periods
        ),
        "",
        "Times are seconds after the burst; median and worst over the repetitions. "
        "*decision → first warm* is the same machinery for everyone: process start-up, "
        f"the {fmt_s(tl.load_seconds)} s cold start, the next warm probe, Envoy's EDS ACK.",
        "",
    ]
    rows = []
    for name, rs in reps.items():
        d = median_and_worst([r.decision for r in rs])
        w = median_and_worst([r.warm for r in rs])
        dw = median_and_worst(
            [None if r.warm is None or r.decision is None else r.warm - r.decision for r in rs]
        )
        f = median_and_worst([r.first for r in rs])
        la = median_and_worst([r.last for r in rs])
        rows.append([
            name, len(rs), _cell(d[0], 3), _cell(d[1], 3), _cell(dw[0]), _cell(w[0]), _cell(f[0]),
            _cell(f[1]), _cell(la[0]), _cell(la[1]), sum(r.errors for r in rs),
        ])  # fmt: skip
    lines += [
        report.table(
            ["contender", "reps", "scale decision p50", "decision worst",
             "decision → first warm p50", "first warm p50",
             "first response p50", "first response worst", "last response p50",
             "last response worst", "errors"],
            rows,
        ),
        "",
        "## Target",
        "",
    ]  # fmt: skip
    wr = reps.get("warmroute", [])
    if wr:
        worst = median_and_worst([r.decision for r in wr])[1]
        verdict = "met" if worst <= TARGET_DECISION_S else "missed"
        lines.append(
            f"- warmroute: queued demand to scale-up decision, worst of {len(wr)}: "
            f"{worst * 1e3:.1f} ms (target ≤ {TARGET_DECISION_S:g} s): **{verdict}**"
        )
        base = median_and_worst([r.first for r in wr])[0]
        for name, rs in reps.items():
            if name == "warmroute":
                continue
            med, worst_first = median_and_worst([r.first for r in rs])
            lines.append(
                f"- {name}: first response {med - base:+.2f} s at the median and "
                f"{worst_first - base:+.2f} s at worst, compared with warmroute's median"
            )
    lines += [
        "",
        "A poller adds where the burst falls in its cycle: on average half a period, at worst "
        "a whole one, before any replica starts. The poller here is generous to KEDA/HPA: it "
        "reads the control plane directly (no Prometheus scrape interval on top), jumps "
        "straight to the needed count (KEDA activates 0 → 1 and leaves the rest to the HPA's "
        "next sync), and the new replicas need no scheduling or image pull.",
        "",
        "## Every repetition",
        "",
        report.table(
            ["contender", "#", "first poll", "scale calls (t s → replicas)", "first warm",
             "first response", "last response", "errors"],
            [
                [name, i + 1, _first_poll(r), ", ".join(f"{t:.3f}→{n}" for t, n in r.scale_calls)
                 or "—", _cell(r.warm), _cell(r.first), _cell(r.last), r.errors]
                for name, rs in reps.items()
                for i, r in enumerate(rs)
            ],
        ),
        "",
    ]  # fmt: skip
    png = out_dir / "coldstart.png"
    try:
        report.plot_cdfs(
            png,
            [
                ("first response", {n: [r.first for r in rs if r.first is not None]
                                    for n, rs in reps.items()}),
                ("last response", {n: [r.last for r in rs if r.last is not None]
                                   for n, rs in reps.items()}),
            ],
            xlabel="seconds after the burst",
            ylabel="fraction of repetitions",
            logx=False,
            totals={
                title: {n: len(rs) for n, rs in reps.items()}
                for title in ("first response", "last response")
            },
            suptitle="burst at zero replicas" + (f" (timeline x{tl.scale:g})" if quick else ""),
        )  # fmt: skip
        lines += [f"![cold start: first and last response]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("coldstart", lines, out_dir)
