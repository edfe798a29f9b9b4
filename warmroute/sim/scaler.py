"""A ``Scaler`` that runs simulated replicas as local processes (``warmroute up``).

It lives beside the simulator it starts, not in ``warmroute.autoscale``: the autoscaler
knows only the ``Scaler`` protocol, so it never imports the simulator (or Kubernetes,
whose scaler is ``warmroute.k8s.scale``). The replicas it starts are handed to the
prober, which reports them warm like any other discovery source.
"""

from __future__ import annotations

import asyncio
import logging

from warmroute.config import PoolConfig
from warmroute.discovery.probe import Prober, Readiness, Target
from warmroute.sim import process

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
            logger.info("starting simulated replica %s", self._address(pool, index))
            slots = pool.simulated_slots(index)
            procs[index] = await process.spawn(pool, index, slots)
            address = f"{sim.host}:{sim.base_port + index}"
            self._prober.set(Target(pool.name, address, slots, pool.probe), Readiness.READY)
        costs = self._costs.get(pool.name, {})
        while len(procs) > replicas:
            index = min(procs, key=lambda i: (costs.get(self._address(pool, i), 0), -i))
            self._prober.remove(pool.name, self._address(pool, index))
            await process.stop(procs.pop(index))

    async def mark_deletion_costs(self, pool: PoolConfig, costs: dict[str, int]) -> None:
        self._costs[pool.name] = dict(costs)

    async def close(self) -> None:
        for procs in self._procs.values():
            await asyncio.gather(*(process.stop(p) for p in procs.values()))
        self._procs.clear()

    @staticmethod
    def _address(pool: PoolConfig, index: int) -> str:
        assert pool.simulate is not None
        return f"{pool.simulate.host}:{pool.simulate.base_port + index}"
