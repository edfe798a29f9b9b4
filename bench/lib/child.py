"""Child processes of a benchmark run, started and stopped by pid, never by name.

:class:`Child` runs ``python -m bench.lib.serve KIND ...``, which speaks JSON lines: its first
stdout line says it is ready, then it answers each command written to its stdin with one
line. :class:`Process` is a plain child (Envoy's peers: redis-server, Celery workers, wrk).
Both keep the child's stderr in the run's log directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.lib.util import ROOT, child_env


class ChildError(RuntimeError):
    pass


class Process:
    """One child process; ``stop()`` signals it (SIGTERM, then SIGKILL) and reaps it."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.log, self.env = name, argv, log, env or child_env()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *, stdin: int | None = None, stdout: int | None = None) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                cwd=ROOT,
                env=self.env,
                # Own session: a Ctrl-C in the terminal reaches only the orchestrator,
                # which then stops every child in order.
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Child(Process):
    """``python -m bench.lib.serve KIND ARGS``: a JSON-lines command channel on stdin/stdout."""

    def __init__(self, kind: str, args: list[str], log: Path, env: dict[str, str] | None = None):
        super().__init__(kind, [sys.executable, "-m", "bench.lib.serve", kind, *args], log, env)
        self.ready: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def start_child(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start it and return its ready message; raises ChildError if it dies first."""
        await self.start(stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.ready = await self._read(timeout)
        return self.ready

    async def call(self, cmd: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            await self.proc.stdin.drain()
            return await self._read(timeout)

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise ChildError(f"{self.name}: no answer in {timeout}s\n{self.tail()}") from None
        if not line:
            await self.proc.wait()
            raise ChildError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ChildError(f"{self.name}: {reply['error']}")
        return reply

    async def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Close its stdin (it exits on EOF), then signal it if it lingers."""
        proc = self.proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout)
        await super().stop(timeout, sig)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point this process's stdout/stderr (file descriptors 1 and 2) at ``path`` for the
    block, so children it spawns meanwhile without redirecting their output themselves
    (e.g. the replicas of warmroute's in-process ``LocalScaler``) inherit the log file
    instead of the terminal. Whatever this process prints meanwhile (other tasks' progress
    lines too) goes to the file as well."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
