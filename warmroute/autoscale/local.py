"""A ``Scaler`` that runs simulated replicas as local processes (``warmroute up``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from warmroute.config import PoolConfig
from warmroute.discovery.probe import Prober, Readiness, Target

logger = logging.getLogger(__name__)


class LocalScaler:
    """Replica i of a pool listens on ``simulate.base_port + i``; scaling up starts the
    lowest free indexes, scaling down stops the idlest (highest deletion cost last)."""

    def __init__(self, prober: Prober) -> None:
        self._prober = prober
        self._procs: dict[str, dict[int, asyncio.subprocess.Process]] = {}
        self._costs: dict[str, dict[str, int]] = {}

    async def get_replicas(self, pool: PoolConfig) -> int:
        return len(self._procs.get(pool.name, {}))

    async def set_replicas(self, pool: PoolConfig, replicas: int) -> None:
        sim = pool.simulate
        if sim is None:
            raise ValueError(f"pool {pool.name} has no `simulate` section to scale")
        procs = self._procs.setdefault(pool.name, {})
        index = 0
        while len(procs) < replicas:
            while index in procs:
                index += 1
            procs[index] = await self._spawn(pool, index)
            address = f"{sim.host}:{sim.base_port + index}"
            self._prober.set(Target(pool.name, address, pool.slots, pool.probe), Readiness.READY)
        costs = self._costs.get(pool.name, {})
        while len(procs) > replicas:
            index = min(procs, key=lambda i: (costs.get(self._address(pool, i), 0), -i))
            self._prober.remove(pool.name, self._address(pool, index))
            await _stop(procs.pop(index))

    async def mark_deletion_costs(self, pool: PoolConfig, costs: dict[str, int]) -> None:
        self._costs[pool.name] = dict(costs)

    async def close(self) -> None:
        for procs in self._procs.values():
            await asyncio.gather(*(_stop(p) for p in procs.values()))
        self._procs.clear()

    @staticmethod
    def _address(pool: PoolConfig, index: int) -> str:
        assert pool.simulate is not None
        return f"{pool.simulate.host}:{pool.simulate.base_port + index}"

    async def _spawn(self, pool: PoolConfig, index: int) -> asyncio.subprocess.Process:
        sim = pool.simulate
        assert sim is not None
        args = [
            "-m", "warmroute.sim", "--host", sim.host, "--port", str(sim.base_port + index),
            "--slots", str(pool.slots), "--load-seconds", str(sim.load_seconds),
            "--distribution", sim.distribution, "--median-ms", str(sim.median_ms),
            "--sigma", str(sim.sigma), "--model", pool.models[0],
        ]  # fmt: skip
        if sim.seed is not None:
            args += ["--seed", str(sim.seed + index)]
        logger.info("starting simulated replica %s", self._address(pool, index))
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
