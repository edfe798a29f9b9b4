"""Config plane: EDS build + serialize at 1k and 10k replicas, push to 100 ADS clients, and
the time from a replica turning warm to it being leasable behind a real Envoy.

The first two reuse ``bench/micro/xds_scale.py``. The third starts a control plane (in this
process) and a real Envoy over ADS, state of the world and delta: each round starts a fresh
simulated replica, emits ``ReplicaUpsert(pool, address, slots, Phase.WARM)`` into the
endpoint publisher, and times until the registry shows the replica WARM, which the
publisher allows only once every connected Envoy has ACKed an EDS version containing it
(``tests/e2e/test_xds.py::test_endpoints_follow_the_registry``). Then it removes the
replica and waits until Envoy has dropped it before the next round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib import report
from bench.lib.stats import Summary, fmt_ms
from bench.lib.util import MODEL, RESULTS, LogDir, free_port, say
from bench.micro.xds_scale import bench_build, bench_push

POOL = "main"
VARIANTS = ("sotw", "delta")
BUILD_SIZES = (1000, 10_000)
PUSH_SIZES = (1, 1000, 10_000)
PUSH_CLIENTS = 100
TARGET_MS = 200.0  # warm -> leasable
STEP_TIMEOUT = 10.0  # seconds, per wait


@dataclass(frozen=True)
class Plan:
    build_sizes: tuple[int, ...] = BUILD_SIZES
    push_sizes: tuple[int, ...] = PUSH_SIZES
    push_clients: int = PUSH_CLIENTS
    build_rounds: int = 5
    push_rounds: int = 10
    warm_rounds: int = 100


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:
        return Plan((100,), (1, 100), 5, build_rounds=1, push_rounds=1, warm_rounds=2)
    if quick:
        return Plan(build_rounds=3, push_rounds=3, warm_rounds=20)
    return Plan()


@dataclass
class BuildRow:
    replicas: int
    build: float  # seconds, median
    serialize: float  # seconds, median
    size: int  # bytes


@dataclass
class PushRow:
    replicas: int
    times: list[float]  # seconds, per round


@dataclass
class WarmRun:
    variant: str
    times: list[float] = field(default_factory=list)  # seconds, warm -> leasable
    early: int = 0  # WARM at once after emit (no Envoy would have been waited for)
    timeouts: int = 0  # never became leasable within STEP_TIMEOUT
    not_in_envoy: int = 0  # leasable, but Envoy's admin did not list it HEALTHY


async def envoy_hosts(http: aiohttp.ClientSession, admin: str, cluster: str) -> dict[str, str]:
    """address -> EDS health status of one cluster's hosts, from Envoy's admin."""
    async with http.get(
        f"http://{admin}/clusters?format=json", timeout=aiohttp.ClientTimeout(total=5)
    ) as r:
        r.raise_for_status()
        data: dict[str, Any] = await r.json(content_type=None)
    out: dict[str, str] = {}
    for c in data.get("cluster_statuses", []):
        if c["name"] != cluster:
            continue
        for h in c.get("host_statuses", []):
            sa = h["address"]["socket_address"]
            health = h.get("health_status", {}).get("eds_health_status", "HEALTHY")
            out[f"{sa['address']}:{sa['port_value']}"] = health
    return out


async def _until(check: Any, timeout: float = STEP_TIMEOUT, every: float = 0.005) -> bool:
    """Await ``check()`` (an async predicate) every ``every`` s until true or ``timeout``."""
    for _ in range(int(timeout / every) + 1):
        if await check():
            return True
        await asyncio.sleep(every)
    return False


async def warm_to_leasable(variant: str, rounds: int, logs: LogDir) -> WarmRun:
    from warmroute.config import Config
    from warmroute.envoy_process import EnvoyProcess
    from warmroute.server import ControlPlane
    from warmroute.sim.replica import SimReplica
    from warmroute.sim.service_time import ServiceTime
    from warmroute.state import Phase, ReplicaRemoved, ReplicaUpsert
    from warmroute.xds.bootstrap import ads_bootstrap, to_json
    from warmroute.xds.resources import pool_cluster_name

    def sim() -> SimReplica:
        return SimReplica(1, 0.0, ServiceTime("fixed", 10.0), seed=0, model=MODEL)

    base = sim()
    base_address = f"127.0.0.1:{await base.start('127.0.0.1', 0)}"
    cfg = Config.model_validate(
        {
            "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
            "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
            "xds": {"variant": variant},
            "pools": [
                {
                    "name": POOL,
                    "models": [MODEL],
                    "probe": {"path": "/health", "interval_seconds": 0.05},
                    "replicas": [base_address],
                }
            ],
        }
    )
    plane = ControlPlane(cfg)
    envoy = EnvoyProcess(
        to_json(ads_bootstrap(cfg, node_id="bench-envoy", variant=variant)),
        cfg.envoy.admin,
        log_level="warning",
        log_path=str(logs.file(f"envoy-{variant}")),
    )
    cluster = pool_cluster_name(POOL)
    admin = cfg.envoy.admin
    pool_state = plane.registry.pools[POOL]
    run = WarmRun(variant)
    await plane.start()
    try:
        await envoy.start()
        async with aiohttp.ClientSession() as http:

            async def has(address: str | None, health: str = "HEALTHY") -> bool:
                hosts = await envoy_hosts(http, admin, cluster)
                if address is None:
                    return hosts == {base_address: "HEALTHY"}
                return hosts.get(address) == health

            if not await _until(lambda: has(None), timeout=30.0):
                raise RuntimeError(f"[{variant}] Envoy never had the base replica over EDS")
            for i in range(rounds):
                extra = sim()
                address = f"127.0.0.1:{await extra.start('127.0.0.1', 0)}"
                try:
                    started = time.perf_counter()
                    plane.publisher.emit(ReplicaUpsert(POOL, address, 1, Phase.WARM))
                    replica = pool_state.replicas[address]
                    if replica.phase is Phase.WARM:
                        run.early += 1
                    for _ in range(int(STEP_TIMEOUT / 0.001)):
                        if replica.phase is Phase.WARM:
                            run.times.append(time.perf_counter() - started)
                            break
                        await asyncio.sleep(0.001)
                    else:
                        run.timeouts += 1
                    if not await has(address):
                        run.not_in_envoy += 1
                    plane.publisher.emit(ReplicaRemoved(POOL, address))
                    if not await _until(lambda: has(None)):
                        raise RuntimeError(f"[{variant}] Envoy kept {address} after removal")
                finally:
                    await extra.stop()
                if (i + 1) % 10 == 0 or i + 1 == rounds:
                    s = Summary.of(run.times).scaled(1e3)
                    say(f"  {variant}: {i + 1}/{rounds}, p50 {s.p50:.1f} ms, max {s.max:.1f} ms")
    finally:
        await envoy.stop()
        await plane.stop()
        with contextlib.suppress(Exception):
            await base.stop()
    return run


async def run(args: argparse.Namespace) -> Path:
    logs = LogDir("config")
    p = plan(args.quick, getattr(args, "smoke", False))
    say(f"config: EDS build/serialize, push to {p.push_clients} ADS clients, warm -> leasable; "
        f"logs {logs.path}")  # fmt: skip
    builds = []
    for n in p.build_sizes:
        b, s, size = bench_build(n, p.build_rounds)
        builds.append(BuildRow(n, b, s, size))
        say(f"build + pack EDS, {n:,} replicas: {b * 1e3:.1f} ms; serialize {s * 1e3:.2f} ms")
    pushes = []
    for n in p.push_sizes:
        times = await bench_push(p.push_clients, n, p.push_rounds)
        pushes.append(PushRow(n, times))
        say(f"push {n:,} replicas to {p.push_clients} clients: "
            f"median {statistics.median(times) * 1e3:.1f} ms")  # fmt: skip
    warm = []
    for variant in VARIANTS:
        say(f"warm -> leasable, {variant}: {p.warm_rounds} rounds")
        warm.append(await warm_to_leasable(variant, p.warm_rounds, logs))
    return write_report(builds, pushes, warm, p, args.out or RESULTS)


def write_report(
    builds: list[BuildRow],
    pushes: list[PushRow],
    warm: list[WarmRun],
    p: Plan,
    out_dir: Path,
) -> Path:
    build_rounds, push_rounds, warm_rounds = p.build_rounds, p.push_rounds, p.warm_rounds
    lines = report.header("Config plane: EDS at scale, and warm to leasable behind Envoy")
    lines += [
        "## Building and serializing EDS",
        "",
        f"`bench/micro/xds_scale.py`'s `bench_build`: one pool's ClusterLoadAssignment for n "
        f"replicas, built and packed (`endpoint_resources`), then one DiscoveryResponse "
        f"serialized; median of {build_rounds}.",
        "",
        report.table(
            ["replicas", "build + pack EDS ms", "serialize response ms", "response bytes"],
            [
                [f"{b.replicas:,}", fmt_ms(b.build * 1e3), fmt_ms(b.serialize * 1e3, 2),
                 f"{b.size:,}"]
                for b in builds
            ],
        ),
        "",
        "## One endpoint change pushed to many ADS clients",
        "",
        f"`bench_push`: {p.push_clients} real gRPC ADS streams (state of the world) in this "
        "process, each ACKing like an Envoy; a round is one EDS change and ends when every "
        f"client has received it. {push_rounds} rounds.",
        "",
        report.table(
            ["ADS clients", "replicas in the update", "median ms", "max ms"],
            [
                [p.push_clients, f"{row.replicas:,}", fmt_ms(statistics.median(row.times) * 1e3),
                 fmt_ms(max(row.times) * 1e3)]
                for row in pushes
            ],
        ),
        "",
        "## A replica turning warm to leasable",
        "",
        "Control plane (in this process) and one real Envoy over ADS. Each round starts a "
        "fresh simulated replica, emits `ReplicaUpsert(pool, address, 1, Phase.WARM)` into "
        "`plane.publisher.emit` and times until the registry holds it `WARM` (polled every "
        "1 ms): the publisher releases it only once every connected Envoy has ACKed an EDS "
        "version containing it. The replica is then removed and the next round waits until "
        f"Envoy's admin no longer lists it. {warm_rounds} rounds per variant.",
        "",
        report.table(
            ["ADS variant", "rounds", "p50 ms", "p99 ms", "max ms", "mean ms",
             "never leasable", "WARM before any ACK", "leasable, not in Envoy"],
            [
                [w.variant, len(w.times) + w.timeouts, fmt_ms(s.p50), fmt_ms(s.p99),
                 fmt_ms(s.max), fmt_ms(s.mean), w.timeouts, w.early, w.not_in_envoy]
                for w in warm
                for s in [Summary.of(w.times).scaled(1e3)]
            ],
        ),
        "",
        "## Target",
        "",
    ]  # fmt: skip
    for w in warm:
        s = Summary.of(w.times).scaled(1e3)
        ok = s.p99 <= TARGET_MS and w.timeouts == 0 and w.early == 0
        lines.append(
            f"- {w.variant}: warm → leasable p99 {s.p99:.1f} ms, max {s.max:.1f} ms "
            f"(target ≤ {TARGET_MS:g} ms): **{'met' if ok else 'missed'}**"
        )
    lines.append("")
    png = out_dir / "config.png"
    try:
        report.plot_cdfs(
            png,
            [("warm → leasable (Envoy EDS ACK)", {w.variant: [t * 1e3 for t in w.times]
                                                  for w in warm})],
            xlabel="ms (log scale)",
            ylabel="fraction of rounds ≤ x",
        )  # fmt: skip
        lines += [f"![warm to leasable CDF]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("config", lines, out_dir)
