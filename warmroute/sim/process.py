"""Simulated replicas as child processes (``warmroute up`` and the local scaler)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from warmroute.children import child_env
from warmroute.config import PoolConfig


def sim_args(pool: PoolConfig, index: int, slots: int | None = None) -> list[str]:
    """``warmroute.sim`` arguments for replica ``index`` of ``pool``: on ``simulate.base_port
    + index``, serving every model of the pool, with ``slots`` (default: the replica's own,
    ``pool.simulated_slots(index)``). Raises :class:`ValueError` without ``simulate``."""
    sim = pool.simulate
    if sim is None:
        raise ValueError(f"pool {pool.name} has no `simulate` section")
    slots = pool.simulated_slots(index) if slots is None else slots
    args = [
        "--host", sim.host, "--port", str(sim.base_port + index),
        "--slots", str(slots), "--load-seconds", str(sim.load_seconds),
        "--distribution", sim.distribution, "--median-ms", str(sim.median_ms),
        "--sigma", str(sim.sigma), "--ttft-ms", str(sim.ttft_ms),
        "--per-token-ms", str(sim.per_token_ms), "--model", *pool.models,
    ]  # fmt: skip
    if sim.seed is not None:
        args += ["--seed", str(sim.seed + index)]
    return args


async def spawn(
    pool: PoolConfig, index: int, slots: int | None = None
) -> asyncio.subprocess.Process:
    """Start replica ``index`` of ``pool`` (see :func:`sim_args`) as a child that dies with us."""
    args = ["-m", "warmroute.sim", *sim_args(pool, index, slots)]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        env=child_env(),
    )


async def stop(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaps."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
