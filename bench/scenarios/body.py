"""Body routing: what reading the model from the JSON body costs per request.

OpenAI chat-completions bodies of 1 KB and 200 KB (``model`` after ``messages``, as the
``openai`` SDK sends them), at fixed open-loop rates (``LOADS``), on 4 replicas x 1000
slots that answer at once (as in the overhead scenario), through three stacks kept up side
by side:

  plain  Envoy alone, round robin, no filters: the baseline
  B      warmroute as shipped: Envoy's json_to_metadata filter parses the body in C++ and
         forwards ``model`` to ext_proc as metadata with the request headers
  A      for comparison (``bench/lib/contenders/buffered_body.py``): no json_to_metadata;
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
import contextlib
import statistics
import time
from pathlib import Path

import aiohttp

from bench.lib.chat_body import chat_body, post_request, size_label
from bench.lib.contenders.base import Contender
from bench.lib.loadgen import Client
from bench.lib.measure import (
    RateRun,
    cpu_by_role,
    fixed_rate,
    idle_rates,
    machine_busy_seconds,
    processes,
    wait_quiet,
)
from bench.lib.stats import Summary
from bench.lib.util import MODEL, RESULTS, LogDir, say
from bench.scenarios.body_plan import (
    BACKENDS,
    LOADS,
    PATH,
    SIZES,
    VARIANTS,
    Cell,
    Plan,
    Sample,
    plan,
    schedule,
)
from bench.scenarios.body_report import write_report
from warmroute.xds.resources import CONTROL_CLUSTER


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


async def run(args: argparse.Namespace) -> Path:
    from bench.lib.contenders.buffered_body import BufferedBody
    from bench.lib.contenders.envoy_static import StaticEnvoy
    from bench.lib.contenders.warmroute import Warmroute

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
    return write_report(p, cells, parse_cost, args.seed, args.out or RESULTS)
