"""Replicas listed in the config, made warm by an HTTP probe.

Emits typed events into one consumer (the registry). A replica starts LOADING; it turns
WARM after one passing probe and back to LOADING after two failing ones in a row (one
lost probe must not pull a busy replica out of rotation). Without a probe it is WARM at
once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from warmroute.config import Config, ProbeConfig
from warmroute.state import Phase, ReplicaEvent, ReplicaRemoved, ReplicaUpsert

logger = logging.getLogger(__name__)

_FAILURES_TO_UNWARM = 2


@dataclass(frozen=True, slots=True)
class _Target:
    pool: str
    address: str
    slots: int
    probe: ProbeConfig | None


class StaticDiscovery:
    """Owns one probe task per configured replica; ``update`` follows config reloads."""

    def __init__(self, emit: Callable[[ReplicaEvent], None]) -> None:
        self._emit = emit
        self._tasks: dict[tuple[str, str], tuple[_Target, asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def update(self, cfg: Config) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        wanted = {
            (p.name, r.address): _Target(p.name, r.address, p.replica_slots(r), p.probe)
            for p in cfg.pools
            for r in p.all_replicas()
        }
        for key in list(self._tasks):
            target, task = self._tasks[key]
            if wanted.get(key) != target:
                task.cancel()
                del self._tasks[key]
                if key not in wanted:
                    self._emit(ReplicaRemoved(target.pool, target.address))
        for key, target in wanted.items():
            if key not in self._tasks:
                task = asyncio.create_task(self._watch(target), name=f"probe {target.address}")
                self._tasks[key] = (target, task)

    async def close(self) -> None:
        tasks = [t for _, t in self._tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _watch(self, target: _Target) -> None:
        probe = target.probe
        if probe is None:
            self._emit(ReplicaUpsert(target.pool, target.address, target.slots, Phase.WARM))
            return
        self._emit(ReplicaUpsert(target.pool, target.address, target.slots, Phase.LOADING))
        warm = False
        failures = 0
        url = f"http://{target.address}{probe.path}"
        timeout = aiohttp.ClientTimeout(total=probe.timeout_seconds)
        while True:
            ok = await self._check(url, probe.expected_status, timeout)
            if ok:
                failures = 0
                if not warm:
                    warm = True
                    logger.info("replica %s (pool %s) is warm", target.address, target.pool)
                    self._emit(ReplicaUpsert(target.pool, target.address, target.slots, Phase.WARM))
            else:
                failures += 1
                if warm and failures >= _FAILURES_TO_UNWARM:
                    warm = False
                    logger.warning(
                        "replica %s (pool %s) failed %d probes: not routable",
                        target.address, target.pool, failures,
                    )  # fmt: skip
                    self._emit(
                        ReplicaUpsert(target.pool, target.address, target.slots, Phase.LOADING)
                    )
            await asyncio.sleep(probe.interval_seconds)

    async def _check(self, url: str, expected: int, limit: aiohttp.ClientTimeout) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(url, timeout=limit) as resp:
                return resp.status == expected
        except (aiohttp.ClientError, TimeoutError):
            return False
