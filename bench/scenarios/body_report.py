"""The body scenario's results page: latency and cost per request of body routing, B vs A."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from bench.lib import report
from bench.lib.chat_body import size_label
from bench.lib.stats import fmt_ms
from bench.lib.util import ROOT
from bench.scenarios.body_plan import BACKENDS, LOADS, PATH, SIZES, VARIANTS, Cell, Load, Plan

Cells = dict[tuple[Load, str], Cell]

LATENCY_HEADERS = [
    "load", "contender", "achieved /s", "ok", "errors",
    "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
]  # fmt: skip
COST_HEADERS = [
    "load", "contender", "control-plane CPU µs", "Envoy CPU µs", "control plane + Envoy µs",
    "vs plain µs", "Envoy → control plane", "Envoy → replicas",
]  # fmt: skip
ROUND_HEADERS = [
    "load", "contender", "p50 / p99 ms", "control-plane CPU µs", "Envoy CPU µs", "others' CPU",
]  # fmt: skip


def load_label(load: Load) -> str:
    size, rate = load
    return f"{size_label(size)} @ {rate}/s"


def _us(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value * 1e6:,.0f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:,.1f} KiB" if value >= 10 * 1024 else f"{value:,.0f} B"


def _both(cell: Cell) -> float:
    """Control plane + Envoy CPU seconds per request (a missing role counts 0)."""
    values = [cell.cpu_per_request(r) for r in ("control plane", "Envoy")]
    return sum(v for v in values if v is not None)


def code_version() -> str:
    """The commit measured, and whether warmroute/ had uncommitted changes (the working
    tree is shared with work in progress, and the benchmark runs what is on disk)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "warmroute")
    return f"`{commit}`" + (" + uncommitted changes in `warmroute/`" if dirty else "")


def latency_rows(cells: Cells) -> list[list[object]]:
    rows: list[list[object]] = []
    for load in LOADS:
        base = cells[(load, "plain")]
        base50, base99 = base.latency_ms(50), base.latency_ms(99)
        for v in VARIANTS:
            c = cells[(load, v.key)]
            p50, p99 = c.latency_ms(50), c.latency_ms(99)
            added = v.key != "plain"
            rows.append([
                load_label(load), v.label, f"{c.achieved:,.0f}",
                f"{len(c.outcomes) - c.errors:,}", c.errors,
                fmt_ms(p50, 2), fmt_ms(p99, 2),
                f"{p50 - base50:+.2f}" if added else "—",
                f"{p99 - base99:+.2f}" if added else "—",
            ])  # fmt: skip
    return rows


def cost_rows(cells: Cells) -> list[list[object]]:
    rows: list[list[object]] = []
    for load in LOADS:
        plain = _both(cells[(load, "plain")])
        for v in VARIANTS:
            c = cells[(load, v.key)]
            rows.append([
                load_label(load), v.label,
                _us(c.cpu_per_request("control plane")), _us(c.cpu_per_request("Envoy")),
                _us(_both(c)), "—" if v.key == "plain" else f"{(_both(c) - plain) * 1e6:+,.0f}",
                _bytes(c.bytes_per_request("control plane")),
                _bytes(c.bytes_per_request("replicas")),
            ])  # fmt: skip
    return rows


def round_rows(cells: Cells) -> list[list[object]]:
    rows: list[list[object]] = []
    for load in LOADS:
        for v in VARIANTS:
            c = cells[(load, v.key)]
            plane = [
                _us(s.cpu_per_request("control plane")) if "control plane" in s.run.cpu else "—"
                for s in c.samples
            ]
            rows.append([
                load_label(load), v.label,
                " · ".join(f"{s.latency_ms(50):.2f} / {s.latency_ms(99):.2f}" for s in c.samples),
                " · ".join(plane),
                " · ".join(_us(s.cpu_per_request("Envoy")) for s in c.samples),
                " · ".join(f"{s.others_share:.0%}" for s in c.samples),
            ])  # fmt: skip
    return rows


def _per_second(us: float) -> str:
    """Requests per second at ``us`` µs each; CPU time is counted in clock ticks, so a
    short run can measure none."""
    return f"~{1e6 / us:,.0f}" if us > 0 else "n/a (no CPU time measured)"


def conclusions(cells: Cells) -> list[str]:
    """Differences that answer "which mechanism costs what", computed from the cells."""
    out = []
    for load in LOADS:

        def get(key: str, load: Load = load) -> Cell:
            return cells[(load, key)]

        def cp(key: str) -> float:
            return (get(key).cpu_per_request("control plane") or 0.0) * 1e6

        def env(key: str) -> float:
            return (get(key).cpu_per_request("Envoy") or 0.0) * 1e6

        def p50(key: str) -> float:
            return get(key).latency_ms(50)

        def p99(key: str) -> float:
            return get(key).latency_ms(99)

        def ctrl_bytes(key: str) -> float:
            return get(key).bytes_per_request("control plane") or 0.0

        label = load_label(load)
        out += [
            f"- **{label}, model in the body, A vs B**: control plane {cp('A-body'):,.0f} vs "
            f"{cp('B-body'):,.0f} µs CPU per request ({cp('A-body') - cp('B-body'):+,.0f} µs; "
            f"one control-plane CPU would route at most {_per_second(cp('A-body'))} vs "
            f"{_per_second(cp('B-body'))} such requests/s); Envoy {env('A-body'):,.0f} vs "
            f"{env('B-body'):,.0f} µs ({env('A-body') - env('B-body'):+,.0f} µs); p50 "
            f"{p50('A-body'):.2f} vs {p50('B-body'):.2f} ms, p99 {p99('A-body'):.2f} vs "
            f"{p99('B-body'):.2f} ms; Envoy → control plane {_bytes(ctrl_bytes('A-body'))} vs "
            f"{_bytes(ctrl_bytes('B-body'))} per request.",
            f"- **{label}, B, model in the body vs in the header**: control plane "
            f"{cp('B-body') - cp('B-header'):+,.0f} µs, Envoy "
            f"{env('B-body') - env('B-header'):+,.0f} µs per request, p50 "
            f"{p50('B-body') - p50('B-header'):+.2f} ms, p99 "
            f"{p99('B-body') - p99('B-header'):+.2f} ms (json_to_metadata parses the body "
            "either way; from the body, ext_proc also sets the header and Envoy re-matches "
            "the route).",
            f"- **{label}, json_to_metadata on the header path** (B header vs A header, "
            f"which never reads the body): Envoy {env('B-header') - env('A-header'):+,.0f} µs "
            f"per request, control plane {cp('B-header') - cp('A-header'):+,.0f} µs, p50 "
            f"{p50('B-header') - p50('A-header'):+.2f} ms, p99 "
            f"{p99('B-header') - p99('A-header'):+.2f} ms.",
        ]
    return out


def conclusion(cells: Cells, parse_cost: dict[int, float]) -> list[str]:
    """The short answer, from the same numbers: what each mechanism costs per request and
    where that cost lands (the single-process Python control plane, or Envoy's workers)."""
    small = min(LOADS)  # the smallest body at its (lowest) rate
    big = max(LOADS)  # the largest body at its highest rate

    def cp(load: Load, key: str) -> float:
        return (cells[(load, key)].cpu_per_request("control plane") or 0.0) * 1e6

    def env(load: Load, key: str) -> float:
        return (cells[(load, key)].cpu_per_request("Envoy") or 0.0) * 1e6

    def added(load: Load, key: str, q: float) -> float:
        return cells[(load, key)].latency_ms(q) - cells[(load, "plain")].latency_ms(q)

    out = []
    for load in (small, big):
        out.append(
            f"- **{load_label(load)}, model only in the body**: B costs {cp(load, 'B-body'):,.0f} "
            f"µs of control-plane CPU and {env(load, 'B-body') - env(load, 'plain'):+,.0f} µs "
            f"of Envoy CPU over plain Envoy per request, A {cp(load, 'A-body'):,.0f} µs and "
            f"{env(load, 'A-body') - env(load, 'plain'):+,.0f} µs; added latency p50/p99 "
            f"{added(load, 'B-body', 50):+.1f}/{added(load, 'B-body', 99):+.1f} ms (B) vs "
            f"{added(load, 'A-body', 50):+.1f}/{added(load, 'A-body', 99):+.1f} ms (A)."
        )
    big_size = size_label(big[0])
    parse = env(big, "B-header") - env(big, "A-header")
    out += [
        f"- **B's cost is in Envoy.** json_to_metadata parses every JSON body in full, "
        f"header-routed or not: {parse:+,.0f} µs of Envoy CPU per {big_size} request "
        f"(B vs A with the header, where A never reads the body; "
        f"{env(small, 'B-header') - env(small, 'A-header'):+,.0f} µs at "
        f"{size_label(small[0])}). The control plane's work does not grow with the body: "
        f"it reads the model from metadata (B body {cp(big, 'B-body'):,.0f} vs header "
        f"{cp(big, 'B-header'):,.0f} µs at {load_label(big)}).",
        f"- **A's cost is in the control plane.** Asking for the body adds a second gRPC "
        f"message each way and the body itself: "
        f"{cp(small, 'A-body') - cp(small, 'A-header'):+,.0f} µs of control-plane CPU at "
        f"{size_label(small[0])}, {cp(big, 'A-body') - cp(big, 'A-header'):+,.0f} µs at "
        f"{big_size} (of which `json.loads`: ~{parse_cost[big[0]] * 1e6:,.0f} µs), plus "
        f"{env(big, 'A-body') - env(big, 'A-header'):+,.0f} µs in Envoy to stream it.",
        f"- **Per control-plane CPU** (one Python process; Envoy scales with its workers), "
        f"body-routed {big_size} requests: ~{_rate(cp(big, 'B-body'))}/s with B vs "
        f"~{_rate(cp(big, 'A-body'))}/s with A. **Per Envoy CPU**: "
        f"~{_rate(env(big, 'B-body'))}/s with B vs ~{_rate(env(big, 'A-body'))}/s with A "
        f"(plain Envoy ~{_rate(env(big, 'plain'))}/s).",
    ]
    return out


def _rate(us_per_request: float) -> str:
    """Requests per CPU-second at this cost, for a sentence."""
    return f"{1e6 / us_per_request:,.0f}" if us_per_request > 0 else "—"


def _idle_text(cells: Cells) -> str:
    """``plain Envoy 0.1%; B control plane 1.2%, Envoy 0.3%; ...``: idle CPU by stack."""
    by_stack: dict[str, dict[str, float]] = {}
    for c in cells.values():
        if c.samples:
            by_stack.setdefault(c.variant.stack, c.samples[0].idle)
    parts = []
    for stack, idle in by_stack.items():
        roles = ", ".join(f"{r} {idle[r]:.1%}" for r in ("control plane", "Envoy") if r in idle)
        parts.append(f"{stack} {roles}")
    return "; ".join(parts)


def write_report(
    p: Plan, cells: Cells, parse_cost: dict[int, float], seed: int, out_dir: Path
) -> Path:
    lines = report.header("Body routing: model in the JSON body, mechanism B vs A", seed)
    loads = ", ".join(load_label(load) for load in LOADS)
    others = max((s.others_share for c in cells.values() for s in c.samples), default=0.0)
    lines += [
        f"warmroute code measured: {code_version()}.",
        "",
        f"`POST {PATH}` with an OpenAI chat-completions body (system + user message, "
        "`model` **after** `messages`, compact JSON, as the `openai` SDK sends it) of exactly "
        f"1 KB or 200 KB (KB = 1024 bytes). Loads (body @ requests/s): {loads}; open-loop "
        "Poisson arrivals from `bench/lib/loadgen.py`, latency from each request's scheduled "
        f"time. {BACKENDS.replicas} simulated replicas x {BACKENDS.slots} slots that read the "
        "whole body and answer at once (`x-sim-service-ms: 0`), so nothing waits for a slot. "
        f"Each (load, variant): {p.warm_seconds:g} s warm-up, then {p.seconds:g} s measured, "
        f"in each of {p.rounds} round(s), in alternating order (forward, then backward), "
        "with the three stacks up side by side:",
        "",
        "- **plain Envoy**: static cluster, round robin, no filters: the baseline.",
        "- **B** (warmroute as shipped): Envoy's `json_to_metadata` filter parses the body "
        "in C++ and forwards `model` to ext_proc as metadata with the request headers; "
        "ext_proc answers the headers (one gRPC message each way); a body-routed request gets "
        "the model header + `clear_route_cache`. json_to_metadata runs on every request, so "
        "it also buffers and parses the body when `x-model` is sent (to check they agree).",
        "- **A** (bench only, `bench/lib/contenders/buffered_body.py`): no json_to_metadata; "
        "ext_proc with `allow_mode_override`; without a model header the control plane "
        "answers the headers with `mode_override.request_body_mode = BUFFERED`, gets the "
        "whole body on the same stream, parses it with `json.loads` (warmroute's "
        "`parse_body`) and answers the body message with the same routing decision. With "
        "`x-model`, A decides on the headers alone and never reads the body (no agreement "
        "check): that row is the old header-only fast path.",
        "",
        "Everything runs on this machine's CPUs: load generator, three Envoys (2 workers "
        "each, two idle at any time), two control planes, the replicas. The machine is "
        f"shared: before each measurement the run waits (up to {p.quiet_wait:g} s, "
        f"{p.quiet_budget:g} s over the run) until processes outside this benchmark use at "
        f"most {p.quiet_cpus:.0%} of one CPU; what they used during each measurement is in "
        f"the last column of the per-round table (up to {others:.0%} of one CPU in this "
        "run). "
        + (
            f"Latency, CPU and bytes below are **medians over the {p.rounds} rounds**."
            if p.rounds > 1
            else ""
        ),
        "",
        "## Conclusion (computed from the tables below)",
        "",
        *conclusion(cells, parse_cost),
        "",
        "## Latency",
        "",
        report.table(LATENCY_HEADERS, latency_rows(cells)),
        "",
        "Added = this row minus plain Envoy at the same load.",
        "",
        "## Cost per request",
        "",
        report.table(COST_HEADERS, cost_rows(cells)),
        "",
        "CPU: user + system seconds of the process (`/proc/<pid>/stat`, all threads) over "
        "the measured seconds, minus what the same process uses idle (measured for "
        f"{p.idle_seconds:g} s before the runs: {_idle_text(cells)} of one CPU), divided by "
        "the requests sent. Other processes on the machine inflate CPU time too (caches, "
        "frequency), so compare rows of one run rather than runs. Bytes: Envoy's "
        "`upstream_cx_tx_bytes_total` per cluster (control plane: ext_proc + access log + "
        "ADS; replicas: the request as forwarded, so a body that did not reach the replica "
        "would show). For scale, warmroute's `parse_body` (`json.loads`, what A runs per "
        "body-routed request) takes "
        + " and ".join(f"{parse_cost[s] * 1e6:,.0f} µs ({size_label(s)})" for s in SIZES)
        + " of CPU in the load generator's process after the runs.",
        "",
        "## Differences, load by load",
        "",
        *conclusions(cells),
        "",
        "## Per round",
        "",
        report.table(ROUND_HEADERS, round_rows(cells)),
        "",
        "Others' CPU: what the whole machine used during the measurement (`/proc/stat`) "
        "minus this stack's processes and the load generator, in CPUs (100% = one of "
        f"{report.nproc()}).",
        "",
    ]
    png = out_dir / "body.png"
    try:
        report.plot_cdfs(
            png,
            [
                (
                    load_label(load),
                    {v.label: [x * 1e3 for x in cells[(load, v.key)].latencies] for v in VARIANTS},
                )
                for load in LOADS
            ],
            xlabel="latency (ms, log scale)",
            suptitle="Body routing: latency CDFs at fixed open-loop rates (service time 0)",
            totals={
                load_label(load): {v.label: len(cells[(load, v.key)].outcomes) for v in VARIANTS}
                for load in LOADS
            },
        )
        lines += [f"![latency CDFs]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("body", lines, out_dir)
