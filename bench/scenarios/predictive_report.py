"""The predictive scenario's results page: latency, 503s and replica-seconds per contender
beside the M/G/c ideal with the minimum and the maximum of replicas warm; the timeline plot."""

from __future__ import annotations

import math
from pathlib import Path

from bench.lib import report
from bench.lib.ideal import fifo_latencies
from bench.lib.trace import Request
from bench.scenarios.predictive_plan import Plan, Run, summarize


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
