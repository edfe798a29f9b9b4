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
from pathlib import Path
from typing import Any

from bench.lib.loadgen import Client, Progress, open_loop
from bench.lib.util import MODEL, RESULTS, LogDir, free_port, say
from bench.scenarios.prefix_plan import (
    CONTENDERS,
    POOL,
    Plan,
    PrefixRequest,
    Run,
    http_payload,
    plan,
    prefix_trace,
    summarize,
)
from bench.scenarios.prefix_report import write_report


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
