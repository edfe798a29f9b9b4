"""A contender measured at a fixed open-loop rate: its requests' outcomes, and the CPU time
each of our processes (load generator, Envoy, replicas, control plane) and the whole
machine used meanwhile, read from Linux's /proc.

Shared by the scenarios that compare stacks request for request (overhead, body). CPU
readers take pids and return seconds; none of them keeps state between calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field

from bench.lib import trace
from bench.lib.contenders.base import Contender
from bench.lib.loadgen import Client, Outcome, Progress, http_request, open_loop


@dataclass
class RateRun:
    """One measured stretch at one rate."""

    rate: int
    outcomes: list[Outcome]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process role
    seconds: float = 0.0  # wall time of the measured part
    gc: list[tuple[int, float, float]] = field(default_factory=list)  # (gen, wall s, CPU s)

    @property
    def latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    @property
    def achieved(self) -> float:
        span = max((o.done for o in self.outcomes), default=0.0)
        return len(self.outcomes) / span if span else 0.0


async def fixed_rate(
    contender: Contender,
    rate: int,
    seconds: float,
    seed: int,
    label: str,
    payload: bytes | None = None,
) -> list[Outcome]:
    """Open-loop requests at ``rate``/s; ``payload`` is the raw HTTP request (default: a
    header-routed request the replica answers at once)."""
    offsets = trace.fixed_rate_offsets(rate, seconds, random.Random(seed * 100_003 + rate))
    if payload is None:
        payload = http_request("127.0.0.1", 0.0)
    client = Client("127.0.0.1", contender.port)
    try:
        with Progress(label, len(offsets)) as progress:
            return await open_loop(
                client, offsets, lambda _: payload,
                timeout=10.0, deadline=seconds + 15.0, progress=progress,
            )  # fmt: skip
    finally:
        client.close()


# -- CPU time, per process and for the machine ----------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes(contender: Contender) -> dict[str, list[int]]:
    """Our processes by role, for CPU accounting."""
    roles: dict[str, list[int]] = {"load generator": [os.getpid()]}
    envoy = getattr(contender, "envoy", None)
    if envoy is not None and envoy.proc is not None:
        roles["Envoy"] = [envoy.proc.pid]
    roles["replicas"] = [ch.proc.pid for ch in contender.sims.children if ch.proc is not None]
    pid = plane_pid(contender)
    if pid:
        roles["control plane"] = [pid]
    return roles


def plane_pid(contender: Contender) -> int | None:
    """The pid of the contender's control plane, if it runs one in its own process."""
    plane = getattr(contender, "plane", None)
    return plane.proc.pid if plane is not None and plane.proc is not None else None


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(p) for p in pids) for role, pids in roles.items()}


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (Linux /proc/stat: all but idle, iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


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
