"""Small shared pieces: paths, ports, progress lines, the run's log directory."""

from __future__ import annotations

import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MODEL = "sim-model"
_T0 = time.monotonic()


def say(message: str) -> None:
    """One progress line on stderr, stamped with seconds since the run began."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


# Server ports are taken BELOW the kernel's ephemeral range (as tests/helpers.py does): a
# port from bind(0) can be handed to an outgoing connection (a probe, a gRPC channel, the
# load generator) between the moment it is picked and the moment Envoy or a replica binds
# it. Each is handed out once per process.
_LOW, _HIGH = _ephemeral_range()
_FIRST, _LAST = (10_000, _LOW - 1) if _LOW > 20_000 else (_HIGH + 1, 65_535)
_given: set[int] = set()
_rng = random.Random()


def free_port() -> int:
    """A free loopback port outside the ephemeral range, not handed out before here."""
    return free_ports(1)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (``simulate.base_port``),
    outside the ephemeral range, none handed out before here."""
    for _ in range(1000):
        base = _rng.randrange(_FIRST, _LAST - count)
        wanted = range(base, base + count)
        if any(p in _given for p in wanted) or not all(_bindable(p) for p in wanted):
            continue
        _given.update(wanted)
        return base
    raise RuntimeError(f"no {count} consecutive free ports in {_FIRST}-{_LAST}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: the repo importable (``bench.*``, ``warmroute``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class LogDir:
    """Where children write their stdout/stderr for this run (kept after the run)."""

    def __init__(self, scenario: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"warmroute-bench-{scenario}-"))

    def file(self, name: str) -> Path:
        return self.path / f"{name}.log"
