"""Real vLLM replicas for the real-vLLM tier: where the install is, and one server process.

A replica is ``DIR/serve.sh PORT ARGS`` (``scripts/vllm/setup.sh DIR`` made it: vLLM's CPU
build, the tiny random Llama served as ``tiny``, LoRA adapters ``DIR/loras/adapter-N``).
It runs in its own session, so stopping it reaps the API server and its engine processes
together, and only them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DIR = Path("/work/real-vllm")
ENV = "WARMROUTE_VLLM_DIR"


def vllm_dir() -> Path:
    """``$WARMROUTE_VLLM_DIR``, else the machine's shared install (``/work/real-vllm``)."""
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


def missing(directory: Path) -> str | None:
    """Why ``directory`` is not a usable install (None if it is)."""
    for need in ("serve.sh", "model/config.json", "loras/adapter-0", "loras/adapter-2"):
        if not (directory / need).exists():
            return f"no {directory / need}"
    return None


class VllmServer:
    """One vLLM replica on ``127.0.0.1:port``; ``health_seen`` is every ``/health`` answer
    (None: the connection was refused) seen while waiting for it to start."""

    def __init__(
        self, directory: Path, port: int, args: Sequence[str], log: Path, max_num_seqs: int
    ) -> None:
        self.directory, self.port, self.args, self.log = directory, port, list(args), log
        self.max_num_seqs = max_num_seqs
        self.health_seen: list[int | None] = []
        self.started_in: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        env = {**os.environ, "VLLM_MAX_NUM_SEQS": str(self.max_num_seqs)}
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(self.directory / "serve.sh"), str(self.port), *self.args],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        self._started_at = time.monotonic()

    def wait_healthy(self, timeout: float) -> None:
        """Poll ``/health`` every 0.2 s until it answers 200; fail (with the log's tail) if
        the server exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            status = self._health()
            self.health_seen.append(status)
            if status == 200:
                self.started_in = time.monotonic() - self._started_at
                return
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"vLLM on {self.port} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM on {self.port} not healthy in {timeout}s:\n{self.tail()}")
            time.sleep(0.2)

    def _health(self) -> int | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to its session (the API server and its engine), SIGKILL after
        ``timeout``; returns once every process of the session is gone."""
        proc = self._proc
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                proc.poll()
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    proc.wait()
                    self._proc = None
                    return
                time.sleep(0.1)
