"""Saturation load with wrk (closed loop: each connection sends as soon as it is answered)."""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass

from bench.lib.util import MODEL

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    command: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rate(self) -> float:
        ok = self.requests - self.non_2xx
        return ok / self.seconds if self.seconds else 0.0


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str, command: str) -> WrkResult:
    """Numbers out of ``wrk --latency`` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    if not done:
        raise ValueError(f"unexpected wrk output:\n{output}")
    seconds = _ms(done.group(2) + done.group(3)) / 1e3
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M))
    return WrkResult(
        requests=int(done.group(1)),
        seconds=seconds,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        p50_ms=_ms(pct["50"]),
        p99_ms=_ms(pct["99"]),
        command=command,
    )


async def run(port: int, seconds: int, connections: int = 64, threads: int = 2) -> WrkResult:
    binary = shutil.which("wrk")
    if binary is None:
        raise FileNotFoundError("no wrk on PATH: run `bash bench/setup.sh`")
    argv = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-H", f"x-model: {MODEL}", "-H", "x-sim-service-ms: 0",
        f"http://127.0.0.1:{port}/v1/completions",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    shown = " ".join(a if " " not in a else f"'{a}'" for a in ["wrk", *argv[1:]])
    return parse(out.decode(errors="replace"), shown)
