"""The overhead scenario's results page: added latency, saturation, CPU, GC, profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.lib import report, wrk
from bench.lib.measure import RateRun
from bench.lib.stats import Summary, fmt_ms
from bench.scenarios.overhead_plan import (
    BACKENDS,
    LABELS,
    PLAIN,
    ROUTED,
    TARGET_P50_MS,
    TARGET_P99_MS,
    TARGET_RATE,
    Plan,
)


def write_report(
    p: Plan,
    results: dict[str, tuple[list[RateRun], wrk.WrkResult | None, dict[str, Any]]],
    seed: int,
    out_dir: Path,
) -> Path:
    plain_runs, plain_sat, _ = results[PLAIN]
    routed_runs, routed_sat, extra = results[ROUTED]
    lines = report.header("Overhead: Envoy + warmroute vs plain Envoy", seed)
    lines += [
        f"{BACKENDS.replicas} simulated replicas x {BACKENDS.slots} slots answering at once "
        "(`x-sim-service-ms: 0`), so no request ever waits for a slot: every difference is "
        "warmroute's own cost (ext_proc round trip and lease, access-log release). "
        "**plain Envoy**: static cluster, round robin, no filters. **Envoy + warmroute**: "
        "ext_proc + gRPC access log, control plane in its own process (ADS).",
        "",
        "Fixed rates: open-loop Poisson arrivals from `bench/lib/loadgen.py` (a minimal asyncio "
        "HTTP/1.1 keep-alive client; latency from each request's *scheduled* time, so queueing "
        "is never hidden). wrk, being closed-loop (a connection waits for its answer before "
        "sending again), would under-report latency at a fixed rate (coordinated omission) and "
        "wrk2 is not packaged in Debian, so wrk is used only for saturation, where closed loop "
        f"is the point. {p.seconds:g} s measured per rate after {p.warm_seconds:g} s of warm-up "
        "at the same rate. Everything (load generator, Envoy with 2 workers, control plane, "
        "replicas) shares this machine's CPUs.",
        "",
        "## Added latency at fixed rates",
        "",
    ]
    rows = []
    verdicts = []
    for plain, routed in zip(plain_runs, routed_runs, strict=True):
        a = Summary.of(plain.latencies).scaled(1e3)
        b = Summary.of(routed.latencies).scaled(1e3)
        add50, add99 = b.p50 - a.p50, b.p99 - a.p99
        plane = routed.cpu.get("control plane")
        cpu = f"{plane / len(routed.outcomes) * 1e6:.0f} µs" if plane and routed.outcomes else "—"
        rows.append([
            plain.rate, f"{plain.achieved:,.0f}", f"{routed.achieved:,.0f}",
            fmt_ms(a.p50, 2), fmt_ms(a.p99, 2), fmt_ms(b.p50, 2), fmt_ms(b.p99, 2),
            f"{add50:+.2f}", f"{add99:+.2f}", f"{plain.errors}/{routed.errors}", cpu,
        ])  # fmt: skip
        verdicts.append((plain.rate, add50, add99, routed.errors))
    lines += [
        report.table(
            [
                "rate /s",
                "plain achieved /s",
                "warmroute achieved /s",
                "plain p50 ms",
                "plain p99 ms",
                "warmroute p50 ms",
                "warmroute p99 ms",
                "added p50 ms",
                "added p99 ms",
                "errors plain/warmroute",
                "control-plane CPU per request",
            ],
            rows,
        ),
        "",
    ]
    lines += saturation_section(plain_sat, routed_sat)
    cpu_rows = []
    for name, runs in ((PLAIN, plain_runs), (ROUTED, routed_runs)):
        for r in runs:
            if not r.cpu or not r.seconds:
                continue
            roles = ["load generator", "Envoy", "replicas", "control plane"]
            cpu_rows.append([
                r.rate, LABELS[name],
                *(f"{r.cpu[k] / r.seconds:.0%}" if k in r.cpu else "—" for k in roles),
                f"{sum(r.cpu.values()) / r.seconds:.0%}",
                f"{sum(r.cpu.values()) / max(len(r.outcomes), 1) * 1e6:.0f}",
            ])  # fmt: skip
    if cpu_rows:
        lines += [
            "CPU used by each of our processes while a rate was measured (100% = one CPU; "
            "the machine has " + str(report.nproc()) + "):",
            "",
            report.table(
                [
                    "rate /s",
                    "",
                    "load generator",
                    "Envoy",
                    "replicas",
                    "control plane",
                    "total",
                    "total CPU µs per request",
                ],
                sorted(cpu_rows, key=lambda row: (row[0], row[1] != LABELS[PLAIN])),
            ),
            "",
        ]
    gc_rows = []
    for r in routed_runs:
        for gen in (0, 1, 2):
            pauses = [(wall, cpu) for g, wall, cpu in r.gc if g == gen]
            if pauses:
                worst = max(pauses)
                gc_rows.append([
                    r.rate, gen, len(pauses), f"{sum(w for w, _ in pauses) * 1e3:.1f}",
                    f"{worst[0] * 1e3:.2f}", f"{worst[1] * 1e3:.2f}",
                ])  # fmt: skip
    if gc_rows:
        lines += [
            "Garbage collections in the control plane during each measured rate "
            "(stop-the-world pauses of its event loop; wall time includes being descheduled "
            "by other processes mid-collection, CPU time does not):",
            "",
            report.table(
                [
                    "rate /s",
                    "generation",
                    "collections",
                    "total wall ms",
                    "longest: wall ms",
                    "longest: CPU ms",
                ],
                gc_rows,
            ),
            "",
        ]
    wrk_cpu = extra.get("wrk_plane_cpu_s")
    if wrk_cpu and routed_sat is not None:
        busy = wrk_cpu / (routed_sat.seconds or 1)
        lines += [
            f"During saturation the control plane used {busy:.0%} of one CPU "
            f"({wrk_cpu / max(routed_sat.requests, 1) * 1e6:.0f} µs CPU per request); "
            f"on a CPU of its own that is a bound of ~{routed_sat.requests / wrk_cpu:,.0f} "
            "routed requests/s from one control-plane process.",
            "",
        ]
    m = extra.get("metrics", {})
    if m:
        count = m.get("warmroute_decision_seconds_count", 0.0)
        decision = m.get("warmroute_decision_seconds_sum", 0.0) / count * 1e6 if count else 0.0
        lines += [
            f"warmroute's own accounting over the run: {count:,.0f} leases, mean ext_proc "
            f"decision {decision:.0f} µs (excluding queue wait), upstream mismatches "
            f"{m.get('warmroute_upstream_mismatch_total', 0):.0f}, requests on a full replica "
            f"{extra.get('full_hits', 0)}.",
            "",
        ]
    heap = extra.get("heap")
    if heap:
        (obj0, rss0), (obj1, rss1) = heap
        lines += [
            f"Control-plane heap across all of the above: {obj0:,} → {obj1:,} objects tracked "
            f"by the garbage collector, RSS {rss0 / 2**20:.0f} → {rss1 / 2**20:.0f} MiB.",
            "",
        ]
    lines += ["## Targets", ""]
    for rate, add50, add99, errors in verdicts:
        lines.append(
            f"- {rate}/s: added p50 {add50:+.2f} ms (target ≤ {TARGET_P50_MS:g}): "
            f"**{'met' if add50 <= TARGET_P50_MS else 'missed'}**; added p99 {add99:+.2f} ms "
            f"(target ≤ {TARGET_P99_MS:g}): **{'met' if add99 <= TARGET_P99_MS else 'missed'}**"
            + (f"; {errors} errors" if errors else "")
        )
    if routed_sat is not None:
        lines.append(
            f"- routed requests/s at saturation: {routed_sat.ok_rate:,.0f} (target ≥ "
            f"{TARGET_RATE:,.0f} on a 2-core machine): "
            f"**{'met' if routed_sat.ok_rate >= TARGET_RATE else 'missed'}**"
        )
    lines.append("")
    prof = extra.get("profile")
    if prof:
        lines += profile_section(prof, p.profile_rate)
    png = out_dir / "overhead.png"
    try:
        report.plot_cdfs(
            png,
            [
                (
                    f"{pr.rate}/s",
                    {
                        LABELS[PLAIN]: [v * 1e3 for v in pr.latencies],
                        LABELS[ROUTED]: [v * 1e3 for v in rr.latencies],
                    },
                )
                for pr, rr in zip(plain_runs, routed_runs, strict=True)
            ],
            xlabel="latency (ms, log scale)",
            suptitle="Latency CDF at fixed open-loop rates (service time 0)",
            totals={
                f"{pr.rate}/s": {LABELS[PLAIN]: len(pr.outcomes), LABELS[ROUTED]: len(rr.outcomes)}
                for pr, rr in zip(plain_runs, routed_runs, strict=True)
            },
        )
        lines += [f"![latency CDFs]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("overhead", lines, out_dir)


def saturation_section(plain: wrk.WrkResult | None, routed: wrk.WrkResult | None) -> list[str]:
    lines = ["## Saturation (wrk)", ""]
    if plain is None or routed is None:
        return [*lines, "Not measured in this run: wrk was left out (see the header).", ""]
    return [
        *lines,
        report.table(
            ["", "requests/s", "2xx requests/s", "p50 ms", "p99 ms", "non-2xx", "socket errors"],
            [
                [
                    LABELS[n],
                    f"{s.rate:,.0f}",
                    f"{s.ok_rate:,.0f}",
                    fmt_ms(s.p50_ms, 2),
                    fmt_ms(s.p99_ms, 2),
                    s.non_2xx,
                    s.socket_errors,
                ]
                for n, s in ((PLAIN, plain), (ROUTED, routed))
            ],
        ),
        "",
        f"Command: `{routed.command}` (the port differs per contender).",
        "",
    ]


def profile_section(prof: dict[str, Any], rate: int) -> list[str]:
    busy = (prof["total_tt"] - prof["idle"]) or 1.0
    n = max(prof["requests"], 1)
    return [
        "## Control-plane profile",
        "",
        f"cProfile on the control plane's event-loop thread (where ext_proc and the access "
        f"log run) while it served {prof['requests']:,} requests at {rate}/s: "
        f"{busy:.2f} s busy ({busy / n * 1e6:.0f} µs per request, inflated by the profiler), "
        f"{prof['idle']:.2f} s idle in `epoll.poll` (left out below). gRPC's C core runs in "
        "its own threads and is not seen; its Cython `grpc.aio` layer runs as asyncio "
        "callbacks, so cProfile books it as the own time of `Context.run`. Top 10 by own "
        f"time; full profile: `{prof['path']}` (`python -m pstats`).",
        "",
        report.table(
            [
                "#",
                "function",
                "calls",
                "calls per request",
                "own time s",
                "% of busy",
                "cumulative s",
            ],
            [
                [
                    i + 1,
                    f"`{r['function']}`",
                    f"{r['ncalls']:,}",
                    f"{r['ncalls'] / n:.1f}",
                    f"{r['tottime']:.3f}",
                    f"{r['tottime'] / busy:.1%}",
                    f"{r['cumtime']:.3f}",
                ]
                for i, r in enumerate(prof["top"])
            ],
        ),
        "",
        "Own time by layer:",
        "",
        report.table(
            ["layer", "own time s", "% of busy", "µs per request"],
            [
                [name, f"{t:.3f}", f"{t / busy:.1%}", f"{t / n * 1e6:.0f}"]
                for name, t in prof["layers"]
            ],
        ),
        "",
    ]
