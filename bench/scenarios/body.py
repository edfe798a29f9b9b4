"""Body routing: what reading the model from the JSON body costs per request.

OpenAI chat-completions bodies of 1 KB and 200 KB (``model`` after ``messages``, as the
``openai`` SDK sends them), at fixed open-loop rates (``LOADS``), on 4 replicas x 1000
slots that answer at once (as in the overhead scenario), through three stacks kept up side
by side:

  plain  Envoy alone, round robin, no filters: the baseline
  B      warmroute as shipped: Envoy's json_to_metadata filter parses the body in C++ and
         forwards ``model`` to ext_proc as metadata with the request headers
  A      for comparison (``bench/contenders/buffered_body.py``): no json_to_metadata;
         ext_proc asks for the buffered body (mode_override BUFFERED) and the control
         plane parses it with json.loads

B and A each get the model twice: in an ``x-model`` header (plus the body), and only in
the body. Measured per (load, variant): latency, CPU seconds of the control plane and of
Envoy per request (net of what each uses idle), bytes Envoy sent to the control plane and
to the replicas per request. Variants are measured in alternating order over
several rounds, so a drift in the machine's other load spreads over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.chat_body import chat_body, post_request, size_label
from bench.contenders.base import Backends, Contender
from bench.loadgen import Client, Outcome
from bench.scenarios.overhead import RateRun, cpu_by_role, cpu_seconds, fixed_rate, processes
from bench.stats import Summary, percentile
from bench.util import MODEL, RESULTS, LogDir, say
from warmroute.xds.resources import CONTROL_CLUSTER

# (body bytes, requests/s): a fixed, moderate rate per size; 200 KB also at a rate where
# this 2-core machine, shared with other work, no longer keeps up with every variant.
LOADS = ((1024, 200), (200 * 1024, 50), (200 * 1024, 100))
SIZES = tuple(sorted({size for size, _ in LOADS}))
Load = tuple[int, int]
BACKENDS = Backends(replicas=4, slots=1000, procs=2)
PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    stack: str  # "plain", "B" or "A"
    header: bool  # the x-model header is sent too
    label: str


VARIANTS = (
    Variant("plain", "plain", False, "plain Envoy (round robin)"),
    Variant("B-header", "B", True, "B json_to_metadata, x-model header"),
    Variant("B-body", "B", False, "B json_to_metadata, model in body"),
    Variant("A-header", "A", True, "A ext_proc BUFFERED, x-model header"),
    Variant("A-body", "A", False, "A ext_proc BUFFERED, model in body"),
)


@dataclass(frozen=True)
class Plan:
    seconds: float  # measured per (size, variant) and round
    warm_seconds: float  # sent first at the same rate, not measured
    rounds: int
    idle_seconds: float  # each stack's idle CPU, measured once
    quiet_cpus: float  # before each measurement, wait until others use at most this,
    quiet_wait: float  # but no longer than this (seconds),
    quiet_budget: float  # and no longer than this over the whole run


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:  # a fraction of a second per cell, no waiting for a quiet machine
        return Plan(seconds=0.2, warm_seconds=0.1, rounds=1, idle_seconds=0.2,
                    quiet_cpus=1.0, quiet_wait=0.0, quiet_budget=0.0)  # fmt: skip
    if quick:
        return Plan(seconds=3.0, warm_seconds=1.0, rounds=1, idle_seconds=2.0,
                    quiet_cpus=0.3, quiet_wait=3.0, quiet_budget=15.0)  # fmt: skip
    return Plan(seconds=5.0, warm_seconds=2.0, rounds=3, idle_seconds=5.0,
                quiet_cpus=0.3, quiet_wait=5.0, quiet_budget=60.0)  # fmt: skip


@dataclass
class Sample:
    """One measured run of one (load, variant)."""

    run: RateRun
    tx: dict[str, float]  # bytes Envoy wrote: "control plane", "replicas"
    machine_busy: float  # CPU seconds the whole machine used meanwhile
    idle: dict[str, float]  # CPU seconds per second, by role, of this stack at rest

    def latency_ms(self, q: float) -> float:
        return percentile([o.latency * 1e3 for o in self.run.outcomes if o.ok], q)

    def cpu_per_request(self, role: str) -> float:
        """CPU seconds of ``role`` per request sent, net of its idle use."""
        return net_per_request(
            [self.run.cpu[role]], [self.run.seconds], self.idle.get(role, 0.0), self.requests
        )

    def bytes_per_request(self, where: str) -> float:
        return self.tx[where] / max(self.requests, 1)

    @property
    def requests(self) -> int:
        return len(self.run.outcomes)

    @property
    def others_share(self) -> float:
        """CPUs the machine used besides this stack and the load generator."""
        others = self.machine_busy - sum(self.run.cpu.values())
        return others / self.run.seconds if self.run.seconds else 0.0


@dataclass
class Cell:
    """One (load, variant): its samples, one per round; headline numbers are medians over
    rounds, so one round disturbed by the machine's other load does not decide them."""

    variant: Variant
    size: int
    rate: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for s in self.samples for o in s.run.outcomes]

    @property
    def latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    def latency_ms(self, q: float) -> float:
        return median_of([s.latency_ms(q) for s in self.samples])

    @property
    def achieved(self) -> float:
        return median_of([s.run.achieved for s in self.samples])

    def cpu_per_request(self, role: str) -> float | None:
        """Median over rounds of ``role``'s CPU seconds per request; None if no such role."""
        if not self.samples or role not in self.samples[0].run.cpu:
            return None
        return median_of([s.cpu_per_request(role) for s in self.samples])

    def bytes_per_request(self, where: str) -> float | None:
        if not self.samples or where not in self.samples[0].tx:
            return None
        return median_of([s.bytes_per_request(where) for s in self.samples])


def median_of(values: list[float]) -> float:
    """The median; NaN for no values (a NaN among them sorts anywhere: avoid passing one)."""
    return statistics.median(values) if values else math.nan


def net_per_request(
    cpu: list[float], seconds: list[float], idle_rate: float, requests: int
) -> float:
    """(CPU seconds used - idle rate x wall seconds) / requests, summed over runs."""
    if requests <= 0:
        return float("nan")
    return (sum(cpu) - idle_rate * sum(seconds)) / requests


def parse_tx_bytes(stats_text: str) -> dict[str, int]:
    """``cluster.<name>.upstream_cx_tx_bytes_total: N`` lines of Envoy's /stats, by cluster."""
    out: dict[str, int] = {}
    for line in stats_text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name.startswith("cluster.") and name.endswith(".upstream_cx_tx_bytes_total"):
            out[name[len("cluster.") : -len(".upstream_cx_tx_bytes_total")]] = int(value)
    return out


def split_tx(by_cluster: dict[str, int]) -> dict[str, float]:
    """Bytes to the control plane (ext_proc, access log, ADS) and to the replicas."""
    control = by_cluster.get(CONTROL_CLUSTER)
    out = {"replicas": float(sum(v for k, v in by_cluster.items() if k != CONTROL_CLUSTER))}
    if control is not None:
        out["control plane"] = float(control)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (Linux /proc/stat: all but idle, iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def envoy_tx(c: Contender) -> dict[str, float]:
    envoy = getattr(c, "envoy", None)
    if envoy is None:
        return {}
    url = f"http://{envoy.admin}/stats?filter=upstream_cx_tx_bytes_total$"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return split_tx(parse_tx_bytes(await resp.text()))


def payload(size: int, header: bool) -> bytes:
    headers = [("x-model", MODEL)] if header else []
    headers.append(("x-sim-service-ms", "0"))  # the replica answers at once
    return post_request("127.0.0.1", PATH, chat_body(size, MODEL, seed=size), headers)


async def measure(
    c: Contender, data: bytes, rate: int, p: Plan, seed: int, label: str, idle: dict[str, float]
) -> Sample:
    """Warm up at ``rate``, then measure: latencies, CPU per process, bytes, machine CPU."""
    await fixed_rate(c, rate, p.warm_seconds, seed + 7, f"{label} warm-up", data)
    roles = processes(c)
    tx0, busy0, cpu0 = await envoy_tx(c), machine_busy_seconds(), cpu_by_role(roles)
    t0 = time.monotonic()
    outcomes = await fixed_rate(c, rate, p.seconds, seed, label, data)
    cpu1, t1, busy1 = cpu_by_role(roles), time.monotonic(), machine_busy_seconds()
    tx1 = await envoy_tx(c)
    run = RateRun(rate, outcomes, {r: cpu1[r] - cpu0[r] for r in roles}, t1 - t0)
    s = Summary.of(run.latencies).scaled(1e3)
    say(
        f"{label}: {len(outcomes)} sent, {run.errors} errors, achieved {run.achieved:.0f}/s, "
        f"p50 {s.p50:.2f} ms, p99 {s.p99:.2f} ms"
    )
    tx = {k: tx1[k] - tx0.get(k, 0.0) for k in tx1}
    return Sample(run, tx, busy1 - busy0, idle)


async def wait_quiet(pids: set[int], cpus: float, max_wait: float) -> tuple[float, float]:
    """Wait until processes other than ``pids`` used at most ``cpus`` CPUs over a second,
    for at most ``max_wait`` seconds (the machine is shared). Returns the last second's
    CPUs used by others and the seconds waited (at least one: the first look)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        busy0, ours0, t0 = machine_busy_seconds(), _cpu_of(pids), loop.time()
        await asyncio.sleep(1.0)
        busy1, ours1, t1 = machine_busy_seconds(), _cpu_of(pids), loop.time()
        others = ((busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)
        waited = t1 - start
        if others <= cpus or waited >= max_wait:
            return others, waited


def _cpu_of(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


async def idle_rates(c: Contender, seconds: float) -> dict[str, float]:
    """CPU seconds per second each of ``c``'s processes uses with no requests."""
    roles = processes(c)
    cpu0, t0 = cpu_by_role(roles), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_by_role(roles), time.monotonic()
    return {r: (cpu1[r] - cpu0[r]) / (t1 - t0) for r in roles}


async def check_routing(c: Contender, name: str) -> None:
    """One request of each kind must be answered 200 by a replica before measuring."""
    client = Client("127.0.0.1", c.port)
    try:
        for size in SIZES:
            for header in (True, False):
                status = await client.request(payload(size, header), timeout=10.0)
                if status != 200:
                    kind = "x-model header" if header else "model in body"
                    raise RuntimeError(f"{name}: {size_label(size)} with {kind} got {status}")
    finally:
        client.close()


def parse_seconds(body: bytes, batches: int = 7, calls_per_kib: int = 50_000) -> float:
    """CPU seconds one ``parse_body`` (warmroute's json.loads of a body, what A runs per
    request) takes in this process: the median of ``batches`` timed batches."""
    from warmroute.request.model import parse_body

    calls = max(1, calls_per_kib // max(len(body) // 1024, 1))  # default: >= ~20 ms a batch
    times = []
    for _ in range(batches):
        t0 = time.thread_time()
        for _ in range(calls):
            parse_body(body)
        times.append((time.thread_time() - t0) / calls)
    return statistics.median(times)


def schedule(rounds: int) -> list[list[tuple[Load, Variant]]]:
    """Per round, the (load, variant) order: forward in even rounds, backward in odd ones,
    so a steady drift in the machine's load weighs on every variant alike."""
    order = [(load, v) for load in LOADS for v in VARIANTS]
    return [order if r % 2 == 0 else order[::-1] for r in range(rounds)]


async def run(args: argparse.Namespace) -> Path:
    from bench.contenders.buffered_body import BufferedBody
    from bench.contenders.envoy_static import StaticEnvoy
    from bench.contenders.warmroute import Warmroute

    p = plan(args.quick, getattr(args, "smoke", False))
    logs = LogDir("body")
    rates = ", ".join(f"{size_label(s)} at {r}/s" for s, r in LOADS)
    say(
        f"body: {BACKENDS.replicas} replicas x {BACKENDS.slots} slots, service 0 ms; {rates}; "
        f"{p.seconds:g} s per variant x {p.rounds} round(s); logs {logs.path}"
    )
    payloads = {(size, h): payload(size, h) for size in SIZES for h in (True, False)}
    async with contextlib.AsyncExitStack() as stack:
        stacks: dict[str, Contender] = {
            "plain": await stack.enter_async_context(StaticEnvoy("envoy-rr", BACKENDS, logs)),
            "B": await stack.enter_async_context(Warmroute("warmroute-B", BACKENDS, logs)),
            "A": await stack.enter_async_context(BufferedBody("warmroute-A", BACKENDS, logs)),
        }
        for name in ("B", "A"):
            await check_routing(stacks[name], name)
        if not await stacks["A"].bodies():  # type: ignore[attr-defined]
            raise RuntimeError("A routed bodies without reading them: its listener rewrite failed")
        idle = {}
        for name, c in stacks.items():
            idle[name] = await idle_rates(c, p.idle_seconds)
            say(f"{name} idle: " + ", ".join(f"{r} {v:.1%}" for r, v in idle[name].items()))
        cells = {(load, v.key): Cell(v, *load) for load in LOADS for v in VARIANTS}
        ours = {pid for c in stacks.values() for pids in processes(c).values() for pid in pids}
        budget = p.quiet_budget
        for r, order in enumerate(schedule(p.rounds)):
            for (size, rate), v in order:
                label = f"round {r + 1}/{p.rounds} {size_label(size)} {v.key} {rate}/s"
                others, waited = 0.0, 0.0
                if p.quiet_budget:  # 0: do not even look (--smoke)
                    others, waited = await wait_quiet(ours, p.quiet_cpus, min(p.quiet_wait, budget))
                budget = max(0.0, budget - waited)
                if others > p.quiet_cpus:
                    say(f"{label}: machine still busy ({others:.0%} of a CPU used by others "
                        f"after {waited:.0f} s): measuring anyway")  # fmt: skip
                sample = await measure(
                    stacks[v.stack], payloads[(size, v.header)], rate, p,
                    args.seed + 1000 * r, label, idle[v.stack],
                )  # fmt: skip
                cells[((size, rate), v.key)].samples.append(sample)
        for name, c in stacks.items():
            full = sum(s["received_while_full"] for s in await c.sims.stats())
            if full:
                say(f"{name}: {full} requests reached a full replica")
    timing = {"batches": 1, "calls_per_kib": 500} if getattr(args, "smoke", False) else {}
    parse_cost = {
        size: parse_seconds(chat_body(size, MODEL, seed=size), **timing) for size in SIZES
    }
    from bench.scenarios.body_report import write_report

    return write_report(p, cells, parse_cost, args.seed, args.out or RESULTS)
