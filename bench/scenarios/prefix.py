"""Prefix affinity: a prefix-heavy trace on replicas whose prefix cache makes a hit faster.

A few tenants each send chat requests that start with their own long system prompt
(popularity Zipf) followed by a unique question; arrivals are Poisson. The replicas are
``SimReplica``s with a prefix cache (``warmroute.sim.prefix_cache``) that holds only a few
system prompts' worth of blocks, so where a request lands decides whether it hits. One
seeded trace replays identically (fresh replicas and caches, fresh control plane, a real
Envoy over ADS) against:

* ``least_loaded``: the default policy, blind to prompts;
* ``prefix_affinity``: the free replica that served the longest prefix, within
  ``max_imbalance`` (2) in-flight requests of the least busy free replica (warmroute asks
  Envoy for the body of this pool's requests and hashes the prompt);
* ``session (tenant header)``: ``prefix_affinity`` with prompt hashing off and the tenant
  sent as ``x-session-id``: affinity from a header alone, no body crosses to warmroute.

Measured: latency from each request's scheduled arrival (open loop), the replicas' prefix
hits (requests whose first block was cached; cached share of all prompt blocks), errors,
and requests on a full replica. The ideal is the M/G/c FIFO queue on the same arrivals
with every request served as if all replicas had every prompt seen before cached (a
tenant's first request misses, all later ones hit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lib import report
from bench.lib.ideal import fifo_latencies
from bench.lib.loadgen import Client, Outcome, Progress, open_loop
from bench.lib.stats import percentile
from bench.lib.trace import Lognormal, phase_seed
from bench.lib.util import MODEL, RESULTS, LogDir, free_port, say

POOL = "main"


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float  # seconds of arrivals
    replicas: int = 4
    slots: int = 2
    tenants: int = 24
    zipf: float = 0.8  # tenant popularity ~ 1 / rank**zipf
    system_chars: int = 2048
    question_chars: tuple[int, int] = (40, 400)
    service: Lognormal = field(default_factory=lambda: Lognormal(300.0, 0.5))
    speedup: float = 3.0  # a whole prompt cached: service / speedup
    block_chars: int = 256  # the replicas' and warmroute's
    cache_blocks: int = 96  # per replica: about 10 system prompts
    load: float = 0.85  # of the capacity without any hit
    max_imbalance: int = 2
    # Afterwards, one at a time with no service time: what deciding costs per request
    # (for prefix_affinity: Envoy sends warmroute the body, warmroute hashes the prompt).
    overhead_requests: int = 400

    @property
    def servers(self) -> int:
        return self.replicas * self.slots

    @property
    def rate(self) -> float:
        """Arrivals per second: ``load`` of what the slots serve with no prefix hit."""
        return self.load * self.servers / (self.service.mean_ms / 1000.0)


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:
        return Plan(duration=1.0, overhead_requests=5)
    return Plan(duration=15.0, overhead_requests=100) if quick else Plan(duration=60.0)


CONTENDERS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    # (name, pool settings, send the tenant as x-session-id)
    ("least_loaded", {"policy": "least_loaded"}, False),
    ("prefix_affinity", {"policy": "prefix_affinity"}, False),
    (
        "session (tenant header)",
        {"policy": "prefix_affinity", "affinity": {"block_chars": 0}},
        True,
    ),
)


# -- pure parts (tests/unit/test_bench_prefix.py) ------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixRequest:
    at: float  # seconds since the trace started
    service_ms: float  # without any prefix hit; sent as x-sim-service-ms
    tenant: int
    question: str

    @property
    def service_s(self) -> float:
        return self.service_ms / 1000.0


def system_prompt(tenant: int, chars: int) -> str:
    """Tenant ``tenant``'s system prompt: ``chars`` characters, distinct from the first."""
    head = f"You are the assistant of tenant {tenant}. "
    words = random.Random(tenant).choices(
        ["policy", "invoice", "refund", "order", "customer", "account", "shipping", "ticket"],
        k=chars // 5,
    )
    return (head + " ".join(words))[:chars]


def prefix_trace(p: Plan, seed: int) -> list[PrefixRequest]:
    """Poisson arrivals at ``p.rate`` for ``p.duration``; Zipf tenants; unique questions."""
    rng = random.Random(phase_seed(seed, 0))
    weights = [1.0 / (k + 1) ** p.zipf for k in range(p.tenants)]
    out: list[PrefixRequest] = []
    t = rng.expovariate(p.rate)
    n = 0
    while t < p.duration:
        tenant = rng.choices(range(p.tenants), weights)[0]
        size = rng.randint(*p.question_chars)
        question = f"q{n}: " + "".join(rng.choices("abcdefghij klmnop", k=size))
        out.append(PrefixRequest(round(t, 6), round(p.service.sample_ms(rng), 3), tenant, question))
        t += rng.expovariate(p.rate)
        n += 1
    return out


def chat_body(p: Plan, r: PrefixRequest) -> bytes:
    messages = [
        {"role": "system", "content": system_prompt(r.tenant, p.system_chars)},
        {"role": "user", "content": r.question},
    ]
    return json.dumps({"model": MODEL, "messages": messages}).encode()


def http_payload(p: Plan, r: PrefixRequest, session: bool) -> bytes:
    body = chat_body(p, r)
    extra = f"x-session-id: tenant-{r.tenant}\r\n" if session else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nx-model: {MODEL}\r\n"
        f"x-sim-service-ms: {r.service_ms:.3f}\r\n{extra}content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def ideal_services(p: Plan, trace: list[PrefixRequest]) -> list[float]:
    """Each request's service (s) if every replica had cached every prompt seen before it:
    one cache shared by all, as large as needed."""
    from warmroute.sim.prefix_cache import PrefixCache

    shared = PrefixCache(p.speedup, p.block_chars, capacity_blocks=1 << 30)
    return [r.service_s * shared.serve(chat_body(p, r)).factor(p.speedup) for r in trace]


def summarize(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p99 and mean (seconds), NaN if none."""
    if not latencies:
        return math.nan, math.nan, math.nan
    return percentile(latencies, 50), percentile(latencies, 99), sum(latencies) / len(latencies)


@dataclass
class Run:
    name: str
    outcomes: list[Outcome]
    hits: int  # requests whose first prompt block was cached
    blocks: int
    blocks_hit: int
    full_hits: int
    per_replica: list[int]  # requests each replica received
    sequential: list[float] = field(default_factory=list)  # the overhead phase's latencies

    @property
    def ok_latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)


# -- running it ----------------------------------------------------------------------------


def plane_config(p: Plan, addresses: list[str], pool: dict[str, Any]) -> dict[str, Any]:
    settings = dict(pool)
    if settings.get("policy") == "prefix_affinity":
        affinity = {
            "max_imbalance": p.max_imbalance,
            "block_chars": p.block_chars,
            "session_header": "x-session-id",
            **settings.get("affinity", {}),
        }
        settings["affinity"] = affinity
    return {
        "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "pools": [{
            "name": POOL, "models": [MODEL], "slots": p.slots,
            "queue": {"max_waiting": 10_000, "timeout_seconds": 120.0},
            "probe": {"path": "/health", "interval_seconds": 0.1},
            "replicas": addresses,
            **settings,
        }],
    }  # fmt: skip


async def run_one(
    p: Plan,
    name: str,
    pool: dict[str, Any],
    session: bool,
    trace: list[PrefixRequest],
    logs: LogDir,
) -> Run:
    from warmroute.config import Config
    from warmroute.envoy_process import EnvoyProcess
    from warmroute.server import ControlPlane
    from warmroute.sim.prefix_cache import PrefixCache
    from warmroute.sim.replica import SimReplica
    from warmroute.sim.service_time import ServiceTime
    from warmroute.state import Phase
    from warmroute.xds.bootstrap import ads_bootstrap, to_json

    fixed = ServiceTime("fixed", p.service.median_ms)  # unused: each request says its own
    sims = [
        SimReplica(
            p.slots,
            0.0,
            fixed,
            seed=i,
            model=MODEL,
            prefix_cache=PrefixCache(p.speedup, p.block_chars, p.cache_blocks),
        )
        for i in range(p.replicas)
    ]
    ports = [await sim.start("127.0.0.1", 0) for sim in sims]
    cfg = Config.model_validate(plane_config(p, [f"127.0.0.1:{port}" for port in ports], pool))
    plane = ControlPlane(cfg)
    envoy = EnvoyProcess(
        to_json(ads_bootstrap(cfg, node_id="bench-envoy", variant="sotw")),
        cfg.envoy.admin,
        log_level="warning",
        log_path=str(logs.file(name.replace(" ", "_").replace("(", "").replace(")", ""))),
    )
    client = Client("127.0.0.1", int(cfg.envoy.listen.rpartition(":")[2]))
    try:
        await plane.start()
        await envoy.start()
        registry_pool = plane.registry.pools[POOL]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while sum(r.phase is Phase.WARM for r in registry_pool.replicas.values()) < p.replicas:
            if loop.time() > deadline:
                raise RuntimeError("replicas not warm after 30 s")
            await asyncio.sleep(0.05)
        # Envoy has its routes once a request passes; it must not count in the trace.
        probe = PrefixRequest(0.0, 1.0, -1, "probe")
        for _ in range(100):
            if await client.request(http_payload(p, probe, False), 10.0) == 200:
                break
            await asyncio.sleep(0.1)
        for sim in sims:
            sim.reset()
        payloads = [http_payload(p, r, session) for r in trace]
        with Progress(name, len(trace)) as progress:
            outcomes = await open_loop(
                client,
                [r.at for r in trace],
                payloads.__getitem__,
                timeout=150.0,
                deadline=trace[-1].at + 150.0,
                progress=progress,
            )
        stats = [sim.stats() for sim in sims]
        sequential = []
        for i in range(p.overhead_requests):
            r = PrefixRequest(0.0, 0.0, i % p.tenants, f"overhead {i}")
            data = http_payload(p, r, session)
            start = loop.time()
            if await client.request(data, 10.0) == 200:
                sequential.append(loop.time() - start)
    finally:
        client.close()
        await envoy.stop()
        await plane.stop()
        for sim in sims:
            await sim.stop()
    return Run(
        name,
        outcomes,
        hits=sum(s.prefix_hits for s in stats),
        blocks=sum(s.prefix_blocks for s in stats),
        blocks_hit=sum(s.prefix_blocks_hit for s in stats),
        full_hits=sum(s.received_while_full for s in stats),
        per_replica=[s.received for s in stats],
        sequential=sequential,
    )


async def run(args: argparse.Namespace) -> Path:
    p = plan(args.quick, getattr(args, "smoke", False))
    trace = prefix_trace(p, args.seed)
    logs = LogDir("prefix")
    say(
        f"prefix: {len(trace)} requests over {p.duration:g} s ({p.rate:.1f}/s), "
        f"{p.tenants} tenants, {p.replicas} replicas x {p.slots} slots; logs {logs.path}"
    )
    runs = []
    for name, pool, session in CONTENDERS:
        r = await run_one(p, name, pool, session, trace, logs)
        lat = summarize(r.ok_latencies)
        say(
            f"{name}: p50 {lat[0]:.3f} s, p99 {lat[1]:.3f} s, hits {r.hits}/{len(trace)}, "
            f"{r.errors} errors"
        )
        runs.append(r)
    return write_report(p, trace, runs, args.seed, args.out or RESULTS)


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
