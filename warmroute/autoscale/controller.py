"""Runs the scaling decision when demand appears (pushed by ext_proc), not on a poll.

``poke(pool)`` is called on the request path when a request has to wait; the controller
wakes at once, decides, and asks the ``Scaler``. A slow tick (``tick_seconds``) only ends
idle periods. Scale-ups per pool are rate-limited by ``scale_up_interval_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from warmroute.autoscale.policy import Demand, decide
from warmroute.config import Config, PoolConfig
from warmroute.state import Phase, Registry

logger = logging.getLogger(__name__)


class Scaler(Protocol):
    """Where replicas come from: Kubernetes' scale subresource, or local processes."""

    async def get_replicas(self, pool: PoolConfig) -> int: ...

    async def set_replicas(self, pool: PoolConfig, replicas: int) -> None: ...

    async def mark_deletion_costs(self, pool: PoolConfig, costs: dict[str, int]) -> None:
        """Tell the platform which replicas (by address) to remove first (lowest)."""
        ...


class Autoscaler:
    def __init__(
        self,
        registry: Registry,
        scaler: Scaler,
        cfg: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_seconds: float = 1.0,
        on_scale: Callable[[str, int, int, str], None] | None = None,
    ) -> None:
        self._registry = registry
        self._scaler = scaler
        self._clock = clock
        self._tick = tick_seconds
        self._on_scale = on_scale
        self._wake = asyncio.Event()
        self._targets: dict[str, int] = {}
        self._last_up: dict[str, float] = {}
        self._last_active: dict[str, float] = {}
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        self._pools = {p.name: p for p in cfg.pools if p.autoscale is not None}

    def poke(self, pool: str) -> None:
        """A request is waiting in ``pool``: decide now."""
        self._last_active[pool] = self._clock()
        self._wake.set()

    async def run(self) -> None:
        for pool in self._pools.values():
            self._targets[pool.name] = await self._scaler.get_replicas(pool)
            self._last_active.setdefault(pool.name, self._clock())
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)
            self._wake.clear()
            for pool in list(self._pools.values()):
                try:
                    await self._evaluate(pool)
                except Exception:  # a failed API call must not stop autoscaling
                    logger.exception("autoscaling pool %s failed", pool.name)

    async def _evaluate(self, cfg: PoolConfig) -> None:
        assert cfg.autoscale is not None
        pool = self._registry.pools.get(cfg.name)
        if pool is None:
            return
        now = self._clock()
        in_flight = sum(r.in_flight for r in pool.replicas.values())
        waiting = len(pool.queue)
        if in_flight or waiting:
            self._last_active[cfg.name] = now
        live = [r for r in pool.replicas.values() if r.phase is not Phase.GONE]
        target = self._targets.get(cfg.name)
        if target is None:
            target = self._targets[cfg.name] = await self._scaler.get_replicas(cfg)
        demand = Demand(
            waiting=waiting,
            in_flight=in_flight,
            target=target,
            known=len([r for r in live if r.phase is not Phase.DRAINING]),
            loading_slots=sum(r.slots for r in live if r.phase is Phase.LOADING),
            slots_per_replica=cfg.slots,
            idle_for=now - self._last_active.get(cfg.name, now),
        )
        new = decide(demand, cfg.autoscale)
        if new is None or new == target:
            return
        if new > target:
            if now - self._last_up.get(cfg.name, -1e9) < cfg.autoscale.scale_up_interval_seconds:
                return
            self._last_up[cfg.name] = now
            reason = f"{waiting} waiting, {demand.loading_slots} slots loading"
        else:
            reason = f"idle for {demand.idle_for:.0f}s"
            costs = {r.address: (-100 if r.in_flight == 0 else 100 + r.in_flight) for r in live}
            await self._scaler.mark_deletion_costs(cfg, costs)
        await self._scaler.set_replicas(cfg, new)
        self._targets[cfg.name] = new
        logger.info("pool %s scaled %d -> %d replicas (%s)", cfg.name, target, new, reason)
        if self._on_scale is not None:
            self._on_scale(cfg.name, target, new, reason)
