"""Runs the scaling decision when demand appears (pushed by ext_proc), not on a poll.

``poke(pool)`` is called on the request path when a request has to wait; the controller
wakes at once, decides (``autoscale.mode``: ``predictive`` weighs the predicted wait on
warm replicas against a cold start, ``every_wait`` covers every waiter; see
``warmroute.state.forecast``), and asks the ``Scaler``. A slow tick (``tick_seconds``) only ends
idle periods. Scale-ups per pool are rate-limited by ``scale_up_interval_seconds``.

Decisions run one at a time: pokes that arrive while the ``Scaler`` is being asked are
folded into the next decision, which counts what was asked for (``target``) and not yet
discovered as capacity on its way, so waiting for the platform never asks twice.

Load is read per server (``PoolLoad.busy``: every pool's leases on the address plus load
warmroute did not lease), not as this pool's leases alone: a replica another pool also
lists, or a retired pool's requests still running on it, is busy, so the pool is not idle
and its deletion cost says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from warmroute.autoscale.policy import Demand, decide, decide_predictive
from warmroute.config import Config, PoolConfig
from warmroute.state import Phase, PoolLoad, Registry
from warmroute.state.forecast import Decision

logger = logging.getLogger(__name__)


class Scaler(Protocol):
    """Where replicas come from: Kubernetes' scale subresource, or local processes."""

    async def get_replicas(self, pool: PoolConfig) -> int: ...

    async def set_replicas(self, pool: PoolConfig, replicas: int) -> None: ...

    async def mark_deletion_costs(self, pool: PoolConfig, costs: dict[str, int]) -> None:
        """Tell the platform which replicas (by address) to remove first (lowest)."""
        ...


class Autoscaler:
    """Scales the pools with an ``autoscale`` section; reads the registry, never writes it.

    Not thread-safe: call ``poke`` from the event loop that runs ``run``.
    """

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

    async def start(self) -> None:
        """Read each pool's current target from the platform; idle time starts now."""
        for pool in self._pools.values():
            self._targets[pool.name] = await self._scaler.get_replicas(pool)
            self._last_active.setdefault(pool.name, self._clock())

    async def step(self) -> None:
        """Decide once for every pool (what each wake-up does). A pool whose scaling
        fails is logged and retried at the next step; the others still run."""
        for pool in list(self._pools.values()):
            try:
                await self._evaluate(pool)
            except Exception:  # a failed API call must not stop autoscaling
                logger.exception("autoscaling pool %s failed", pool.name)

    async def run(self) -> None:
        await self.start()
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the inner result
            # and drops a cancellation that lands as its wait completes (a poke as the
            # control plane stops): this loop then ran forever and stop() waited on it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick):
                    await self._wake.wait()
            self._wake.clear()
            await self.step()

    async def _evaluate(self, cfg: PoolConfig) -> None:
        assert cfg.autoscale is not None
        load = self._registry.load(cfg.name)
        if load is None:
            return
        now = self._clock()
        if load.busy or load.waiting:
            self._last_active[cfg.name] = now
        target = self._targets.get(cfg.name)
        if target is None:
            target = self._targets[cfg.name] = await self._scaler.get_replicas(cfg)
        demand = _demand(load, target, cfg.slots, now - self._last_active.get(cfg.name, now))
        new, choice = self._decide(cfg, demand, now)
        if new is None or new == target:
            return
        if new > target:
            if now - self._last_up.get(cfg.name, -1e9) < cfg.autoscale.scale_up_interval_seconds:
                return
            self._last_up[cfg.name] = now
            reason = f"{demand.waiting} waiting, {demand.loading_slots} slots loading"
            if choice is not None and cfg.autoscale.mode == "predictive":
                reason = choice.reason
        else:
            reason = f"idle for {demand.idle_for:.0f}s"
            # Before the platform picks what to delete: idle servers first, then the least
            # busy, counting every pool's requests on them.
            await self._scaler.mark_deletion_costs(cfg, deletion_costs(load))
        await self._scaler.set_replicas(cfg, new)
        self._targets[cfg.name] = new
        logger.info("pool %s scaled %d -> %d replicas (%s)", cfg.name, target, new, reason)
        if self._on_scale is not None:
            self._on_scale(cfg.name, target, new, reason)

    def _decide(
        self, cfg: PoolConfig, demand: Demand, now: float
    ) -> tuple[int | None, Decision | None]:
        """The new target and, while requests wait, the decision behind it, which is
        logged at DEBUG and kept on the pool's forecast for ``/state``."""
        scale = cfg.autoscale
        assert scale is not None
        pool = self._registry.pools.get(cfg.name)
        if demand.waiting <= 0 or pool is None:
            return decide(demand, scale), None
        asked = max(0, demand.target - demand.known) * demand.slots_per_replica
        supply = pool.supply(scale.cold_start_seconds, asked_slots=asked)
        if scale.mode == "predictive":
            new, choice = decide_predictive(demand, supply, scale, cfg.queue.timeout_seconds)
        else:
            new = decide(demand, scale)
            up = 0 if new is None else max(0, new - demand.target)
            choice = Decision(
                up,
                f"every_wait: {demand.waiting} waiting, {demand.loading_slots} slots loading, "
                f"{max(0, demand.target - demand.known)} replicas asked for and not seen",
                math.inf,
                supply.cold_start,
            )
        if choice is not None:
            choice = replace(choice, at=now)
            # The autoscaler writes nothing else in the core: this is a note for /state.
            pool.forecast.record(choice)
            logger.debug(
                "pool %s: %s waiting, target %d, scale up %d: %s",
                cfg.name, demand.waiting, demand.target, choice.scale_up, choice.reason,
            )  # fmt: skip
        return new, choice


def _demand(load: PoolLoad, target: int, slots_per_replica: int, idle_for: float) -> Demand:
    live = load.live
    return Demand(
        waiting=load.waiting,
        in_flight=load.busy,
        target=target,
        known=sum(r.phase is not Phase.DRAINING for r in live),
        loading_slots=load.slots_in(Phase.LOADING),
        slots_per_replica=slots_per_replica,
        idle_for=idle_for,
    )


def deletion_costs(load: PoolLoad) -> dict[str, int]:
    """Per live replica: -100 if its server is idle, else 100 plus its busy slots (every
    pool's leases and external load). The platform removes the lowest first."""
    return {r.address: (-100 if r.busy == 0 else 100 + r.busy) for r in load.live}
