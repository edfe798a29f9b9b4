"""Small shared pieces: paths, ports, progress lines, the run's log directory."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL = "sim-model"
_T0 = time.monotonic()


def say(message: str) -> None:
    """One progress line on stderr, stamped with seconds since the run began."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
