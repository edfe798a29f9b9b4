"""The prefix scenario's results page: hit rate and latency per policy beside an ideal where
every prompt is cached everywhere; where requests landed; the CDF plot."""

from __future__ import annotations

import math
from pathlib import Path

from bench.lib import report
from bench.lib.ideal import fifo_latencies
from bench.lib.stats import percentile
from bench.scenarios.prefix_plan import Plan, PrefixRequest, Run, ideal_services, summarize


def _ms(values: list[float], q: float) -> str:
    return "—" if not values else f"{percentile(values, q) * 1000:.2f}"


def _c(v: float, digits: int = 3) -> str:
    return "—" if math.isnan(v) else f"{v:.{digits}f}"


def write_report(
    p: Plan, trace: list[PrefixRequest], runs: list[Run], seed: int, out_dir: Path
) -> Path:
    services = ideal_services(p, trace)
    ideal = fifo_latencies([r.at for r in trace], services, p.servers)
    ideal_hits = sum(s < r.service_s for s, r in zip(services, trace, strict=True))
    lines = report.header("Prefix affinity: a prefix-heavy trace on caching replicas", seed)
    lines += [
        f"{len(trace)} chat requests over {p.duration:g} s (Poisson, {p.rate:.1f}/s: "
        f"{p.load:.0%} of the slots' capacity with no prefix hit). {p.tenants} tenants, "
        f"Zipf popularity (s = {p.zipf:g}), each with its own {p.system_chars}-character system "
        f"prompt, then a unique question of {p.question_chars[0]}-{p.question_chars[1]} "
        f"characters. Service lognormal, median {p.service.median_ms:g} ms, sigma "
        f"{p.service.sigma:g}, sent with each request; a replica shortens it by the cached "
        f"share of the prompt, to 1/{p.speedup:g} for a prompt cached whole "
        f"(`warmroute.sim.prefix_cache`: {p.block_chars}-character blocks, {p.cache_blocks} "
        f"blocks per replica, about {p.cache_blocks * p.block_chars // p.system_chars} system "
        f"prompts). {p.replicas} in-process simulated replicas x {p.slots} slots, control plane "
        f"in the benchmark process, real Envoy over ADS, open-loop client (latency from each "
        f"request's scheduled arrival). Affinity: `max_imbalance: {p.max_imbalance}`, "
        f"`block_chars: {p.block_chars}`.",
        "",
        "*hit*: a request whose first prompt block was in its replica's cache; *cached*: the "
        "share of all prompt blocks served from cache. The ideal is the M/G/c FIFO queue on "
        "the same arrivals, every request served as if every replica had cached every prompt "
        "seen before it (each tenant's first request misses), with no routing overhead.",
        "",
    ]
    rows: list[list[object]] = []
    for r in runs:
        lat = summarize(r.ok_latencies)
        rows.append([
            r.name, len(r.outcomes), _c(lat[0]), _c(lat[1]), _c(lat[2]),
            f"{r.hits / max(1, len(trace)):.0%}", f"{r.blocks_hit / max(1, r.blocks):.0%}",
            r.errors, r.full_hits, "/".join(map(str, r.per_replica)),
        ])  # fmt: skip
    lat = summarize(ideal)
    rows.append([
        "ideal (all prompts cached everywhere)", len(trace), _c(lat[0]), _c(lat[1]), _c(lat[2]),
        f"{ideal_hits / max(1, len(trace)):.0%}", "—", 0, 0, "—",
    ])  # fmt: skip
    headers = [
        "policy", "requests", "p50 s", "p99 s", "mean s", "hit", "cached", "errors",
        "sent to a full replica", "requests per replica",
    ]  # fmt: skip
    lines += [
        report.table(headers, rows),
        "",
        f"Then {p.overhead_requests} requests one at a time with no service time (the same "
        "chat bodies, about 2.4 kB): the round trip through Envoy, warmroute and the replica, "
        "so the difference between rows is what deciding costs. For prefix_affinity in "
        "own-Envoy mode that includes Envoy sending warmroute the body (a second ext_proc "
        "message) and the prompt's hashing.",
        "",
        report.table(
            ["policy", "requests", "p50 ms", "p90 ms", "p99 ms"],
            [
                [r.name, len(r.sequential), *(_ms(r.sequential, q) for q in (50, 90, 99))]
                for r in runs
            ],
        ),
        "",
        "![latency CDFs](prefix.png)",
        "",
    ]
    series = {r.name: r.ok_latencies for r in runs}
    series["ideal"] = ideal
    report.plot_cdfs(
        out_dir / "prefix.png",
        [("latency from scheduled arrival", series)],
        xlabel="seconds",
        totals={"latency from scheduled arrival": {r.name: len(r.outcomes) for r in runs}},
    )
    return report.write("prefix", lines, out_dir)
