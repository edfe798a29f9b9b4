"""Shared test helpers: wait on conditions with deadlines, never on sleeps."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


# Ports for servers a test starts, taken BELOW the kernel's ephemeral range: a port the
# kernel hands out to outgoing connections (a watch, a probe, a gRPC channel) between the
# moment a test picks it and the moment its server binds it would make the bind fail
# ("address already in use"), which bind(0) ports invite. Handed out once per process.
_EPHEMERAL_LOW, _EPHEMERAL_HIGH = _ephemeral_range()
_FIRST = 10_000 if _EPHEMERAL_LOW > 20_000 else _EPHEMERAL_HIGH + 1
_LAST = _EPHEMERAL_LOW - 1 if _EPHEMERAL_LOW > 20_000 else 65_535
_given: set[int] = set()
_rng = random.Random()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports, never given out before."""
    for _ in range(1000):
        base = _rng.randrange(_FIRST, _LAST - count)
        wanted = range(base, base + count)
        if any(p in _given for p in wanted) or not all(_bindable(p) for p in wanted):
            continue
        _given.update(wanted)
        return base
    raise RuntimeError(f"no {count} consecutive free ports in {_FIRST}-{_LAST}")


def free_port() -> int:
    """A free loopback port outside the ephemeral range, never given out before."""
    return free_ports(1)
