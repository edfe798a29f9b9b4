"""Endpoint picker mode vs own-Envoy mode: added latency and control-plane CPU per request.

    python bench/micro/epp.py [--requests 400] [--clients 4] [--rounds 2] [--sizes 1000,200000]

Three ways to reach the same 4 simulated replicas (1000 slots each, answering in ~1 ms), with
the model only in the JSON body, as real clients send it:

  plain  Envoy alone: a STATIC cluster, round robin (the latency floor)
  own    warmroute's own Envoy (ADS bootstrap): json_to_metadata reads the body's model in
         Envoy, ext_proc sees request headers only, the access log ends the lease
  epp    a gateway-owned Envoy on the Gateway API Inference Extension's picker config
         (tests/e2e/fixtures/epp-envoy.yaml): every body byte streams through the picker
         and back (FULL_DUPLEX_STREAMED), TLS to the picker

For each prompt size, ``--clients`` closed-loop clients send ``--requests`` requests after a
warm-up, in ``--rounds`` rounds that alternate the modes (results pooled). Reported:
client-side latency p50/p99, added p50/p99 over ``plain``, and the CPU time per request of
the control plane and of Envoy (from /proc, so the load generator's own cost is not in
them). Everything shares this machine's CPUs; compare rows, not runs.
Nothing is asserted: this prints a table (and writes bench/results/epp.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.lib.child import Child
from bench.lib.contenders.envoy_static import POLICIES, static_bootstrap
from bench.lib.contenders.warmroute import plane_config
from bench.lib.stats import Summary
from bench.lib.util import MODEL, RESULTS, ROOT, LogDir, free_port, say
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.xds.bootstrap import ads_bootstrap, to_json

FIXTURE = ROOT / "tests" / "e2e" / "fixtures" / "epp-envoy.yaml"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class Mode:
    name: str
    url: str
    envoy: EnvoyProcess
    plane: Child | None

    def pids(self) -> tuple[int | None, int | None]:
        plane = self.plane.proc.pid if self.plane and self.plane.proc else None
        envoy = self.envoy.proc.pid if self.envoy.proc else None
        return plane, envoy

    async def stop(self) -> None:
        await self.envoy.stop()
        if self.plane is not None:
            await self.plane.stop()


async def start_plain(addresses: list[str], logs: LogDir) -> Mode:
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    boot = static_bootstrap(listen, admin, addresses, POLICIES["envoy-rr"])
    envoy = EnvoyProcess(to_json(boot), admin, log_path=str(logs.file("plain-envoy")))
    await envoy.start()
    return Mode("plain", f"http://{listen}", envoy, None)


async def _plane(raw: dict[str, object], name: str, logs: LogDir) -> Child:
    path = logs.path / f"{name}-config.json"
    path.write_text(json.dumps(raw, indent=2))
    plane = Child("plane", ["--config", str(path)], logs.file(f"{name}-plane"))
    await plane.start_child()
    return plane


async def start_own(addresses: list[str], logs: LogDir) -> Mode:
    raw = plane_config(addresses, 1000)
    cfg = Config.model_validate(raw)
    plane = await _plane(raw, "own", logs)
    boot = to_json(ads_bootstrap(cfg, node_id="bench-envoy", variant="sotw"))
    envoy = EnvoyProcess(boot, cfg.envoy.admin, log_path=str(logs.file("own-envoy")))
    await envoy.start()
    return Mode("own", f"http://{cfg.envoy.listen}", envoy, plane)


async def start_epp(addresses: list[str], logs: LogDir) -> Mode:
    raw = plane_config(addresses, 1000)
    raw["epp"] = {"enabled": True}  # TLS on, self-signed, as a gateway would reach it
    picker_port = int(str(raw["control"]["grpc"]).rpartition(":")[2])  # type: ignore[index]
    plane = await _plane(raw, "epp", logs)
    listen, admin = free_port(), free_port()
    text = string.Template(FIXTURE.read_text()).substitute(
        LISTEN_PORT=listen, ADMIN_PORT=admin, PICKER_PORT=picker_port
    )
    boot = json.dumps(yaml.safe_load(text))
    envoy = EnvoyProcess(boot, f"127.0.0.1:{admin}", log_path=str(logs.file("epp-envoy")))
    await envoy.start()
    return Mode("epp", f"http://127.0.0.1:{listen}", envoy, plane)


def prompt(size: int) -> bytes:
    head = json.dumps({"model": MODEL, "max_tokens": 1, "prompt": ""}).encode()[:-2]
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def warm_up(http: aiohttp.ClientSession, url: str, body: bytes, want: int = 30) -> None:
    """Until ``want`` requests in a row succeed (replicas probed warm, picker healthy)."""
    deadline = time.monotonic() + 60
    ok = 0
    while ok < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: no {want} successes in a row within 60 s")
        try:
            async with http.post(url, data=body, headers=_HEADERS) as r:
                await r.read()
                ok = ok + 1 if r.status == 200 else 0
        except aiohttp.ClientError:
            ok = 0
        if not ok:
            await asyncio.sleep(0.1)


_HEADERS = {"content-type": "application/json", "x-sim-service-ms": "1"}


@dataclass
class Sample:
    """What one mode did at one prompt size, pooled over rounds."""

    latencies: list[float]
    requests: int = 0
    errors: int = 0
    plane_cpu: float = 0.0
    envoy_cpu: float = 0.0


async def measure(mode: Mode, size: int, requests: int, clients: int, into: Sample) -> None:
    url = f"{mode.url}/v1/completions"
    body = prompt(size)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        await warm_up(http, url, body)
        latencies = into.latencies
        errors = 0
        remaining = requests

        async def client() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                async with http.post(url, data=body, headers=_HEADERS) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)

        plane_pid, envoy_pid = mode.pids()
        cpu0 = [cpu_seconds(p) if p else 0.0 for p in (plane_pid, envoy_pid)]
        await asyncio.gather(*(client() for _ in range(clients)))
        cpu1 = [cpu_seconds(p) if p else 0.0 for p in (plane_pid, envoy_pid)]
    into.requests += requests
    into.errors += errors
    into.plane_cpu += cpu1[0] - cpu0[0]
    into.envoy_cpu += cpu1[1] - cpu0[1]


async def run(args: argparse.Namespace) -> str:
    logs = LogDir("epp")
    say(f"logs in {logs.path}")
    sims = Child("sims", ["--count", "4", "--slots", "1000"], logs.file("sims"))
    ready = await sims.start_child()
    addresses: list[str] = ready["addresses"]
    starters: dict[str, Callable[[list[str], LogDir], Awaitable[Mode]]] = {
        "plain": start_plain,
        "own": start_own,
        "epp": start_epp,
    }
    samples = {(name, size): Sample([]) for name in starters for size in args.sizes}
    try:
        for round_ in range(1, args.rounds + 1):  # modes alternate, so drift hits all alike
            for name, start in starters.items():
                mode = await start(addresses, logs)
                try:
                    for size in args.sizes:
                        say(
                            f"round {round_}/{args.rounds} {name}: {args.requests} requests "
                            f"of {size} B, {args.clients} clients"
                        )
                        sample = samples[(name, size)]
                        await measure(mode, size, args.requests, args.clients, sample)
                finally:
                    await mode.stop()
    finally:
        await sims.stop()
    results = {}
    for key, sample in samples.items():
        s = Summary.of(sample.latencies).scaled(1e3)
        n = max(sample.requests, 1)
        results[key] = {
            "p50": s.p50,
            "p99": s.p99,
            "errors": sample.errors,
            "plane_us": sample.plane_cpu / n * 1e6,
            "envoy_us": sample.envoy_cpu / n * 1e6,
        }
    return table(results, args)


def table(results: dict[tuple[str, int], dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        f"`python bench/micro/epp.py --requests {args.requests} --clients {args.clients} "
        f"--rounds {args.rounds} "
        f"--sizes {','.join(map(str, args.sizes))}` on {os.cpu_count()} CPUs "
        f"({time.strftime('%Y-%m-%d')}); replicas answer in ~1 ms.",
        "",
        "| mode | prompt | p50 ms | p99 ms | added p50 ms | added p99 ms | "
        "control plane CPU µs/req | Envoy CPU µs/req | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in args.sizes:
        base = results[("plain", size)]
        for name in ("plain", "own", "epp"):
            r = results[(name, size)]
            added = (
                ("—", "—")
                if name == "plain"
                else (f"{r['p50'] - base['p50']:+.2f}", f"{r['p99'] - base['p99']:+.2f}")
            )
            plane = "—" if name == "plain" else f"{r['plane_us']:.0f}"
            lines.append(
                f"| {name} | {size / 1000:g} KB | {r['p50']:.2f} | {r['p99']:.2f} | "
                f"{added[0]} | {added[1]} | {plane} | {r['envoy_us']:.0f} | {r['errors']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/micro/epp.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=400, help="per mode and size")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds, pooled")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1000, 200_000],
        help="prompt body sizes in bytes (comma list)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "epp.md")
    args = parser.parse_args(argv)
    text = asyncio.run(run(args))
    page = "# Endpoint picker mode vs own-Envoy mode\n\n" + text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
