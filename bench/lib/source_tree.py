"""A warmroute source tree run only through its command line, so one benchmark script can
measure any version of the code (an old commit's worktree, this checkout): the control
plane, ``bootstrap`` and simulated replicas all start as ``python -m warmroute ...`` with
that tree first on ``PYTHONPATH``. Used by the converge and restart scenarios; nothing here
imports warmroute."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Tree:
    """A warmroute source tree whose CLI runs every child (control plane, bootstrap, sims)."""

    src: Path
    workdir: Path  # children's cwd: nothing importable, so PYTHONPATH decides

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.src), env.get("PYTHONPATH")) if p)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "warmroute", *args]

    def run(self, *args: str) -> str:
        return subprocess.run(
            self.argv(*args), cwd=self.workdir, env=self.env(), check=True,
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                argv, cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    def check(self) -> str:
        """Where ``warmroute`` is imported from by the children; must be inside ``src``."""
        where = subprocess.run(
            [sys.executable, "-c", "import warmroute; print(warmroute.__file__)"],
            cwd=self.workdir, env=self.env(), check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not Path(where).resolve().is_relative_to(self.src.resolve()):
            raise RuntimeError(f"children import warmroute from {where}, not from {self.src}")
        return where

    def commit(self) -> str:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(self.src), *args], capture_output=True, text=True, check=False
            ).stdout.strip()

        head = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "warmroute")
        return head + (" + uncommitted changes under warmroute/" if dirty else "")


def stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each (by its own pid), then SIGKILL whatever is left after 5 s."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
