"""The ideal router: one central FIFO queue in front of ``c`` servers, zero overhead (M/G/c).

Given the exact arrival times and service times of a trace, the FCFS multi-server queue is
deterministic: each request, in arrival order, starts on the server that frees first (or at
its arrival if one is already idle). No router can beat this on tail latency without
knowing service times in advance, so it is the yardstick for routing quality.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence


def fifo_waits(arrivals: Sequence[float], services: Sequence[float], servers: int) -> list[float]:
    """Queue wait of each request (seconds) under FCFS with ``servers`` identical servers.

    ``arrivals`` must be non-decreasing; ``services`` are the matching service times.
    Raises ValueError on mismatched lengths, unsorted arrivals, negative service times or
    ``servers < 1``.
    """
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    if len(arrivals) != len(services):
        raise ValueError(f"{len(arrivals)} arrivals but {len(services)} service times")
    free = [-math.inf] * servers  # when each server next becomes free (a min-heap)
    waits: list[float] = []
    previous = -math.inf
    for at, service in zip(arrivals, services, strict=True):
        if at < previous:
            raise ValueError("arrivals must be sorted")
        if service < 0:
            raise ValueError(f"service times must be >= 0, got {service}")
        previous = at
        start = max(at, free[0])
        heapq.heapreplace(free, start + service)
        waits.append(start - at)
    return waits


def fifo_latencies(
    arrivals: Sequence[float], services: Sequence[float], servers: int
) -> list[float]:
    """End-to-end latency (wait + service) of each request, seconds."""
    waits = fifo_waits(arrivals, services, servers)
    return [w + s for w, s in zip(waits, services, strict=True)]
