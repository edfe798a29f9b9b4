"""Warm probes: a replica is WARM only after its model server answers its health check.

Sources of replicas (static config, Kubernetes) say what they know — a replica exists and
is ready, not ready, or draining — and ``Prober`` turns that into phase events: ready
replicas are probed over HTTP until they pass (WARM); two failures in a row take a warm
one back to LOADING (one lost probe must not pull a busy replica out of rotation).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from warmroute.config import ProbeConfig
from warmroute.state import Phase, ReplicaEvent, ReplicaRemoved, ReplicaUpsert

logger = logging.getLogger(__name__)

_FAILURES_TO_UNWARM = 2


class Readiness(enum.Enum):
    READY = "ready"  # the platform considers it up: probe it
    NOT_READY = "not_ready"  # up but not ready (or no address yet): LOADING
    DRAINING = "draining"  # being removed: finish in-flight work, take no more


@dataclass(frozen=True, slots=True)
class Target:
    pool: str
    address: str
    slots: int
    probe: ProbeConfig | None


class Prober:
    """One task per probed replica. Call from the event loop."""

    def __init__(self, emit: Callable[[ReplicaEvent], None]) -> None:
        self._emit = emit
        self._targets: dict[tuple[str, str], tuple[Target, Readiness]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def set(self, target: Target, readiness: Readiness) -> None:
        """Declare a replica's state; repeated identical calls do nothing."""
        key = (target.pool, target.address)
        if self._targets.get(key) == (target, readiness):
            return
        self._targets[key] = (target, readiness)
        self._cancel(key)
        if readiness is Readiness.DRAINING:
            self._emit(ReplicaUpsert(target.pool, target.address, target.slots, Phase.DRAINING))
        elif readiness is Readiness.NOT_READY:
            self._emit(ReplicaUpsert(target.pool, target.address, target.slots, Phase.LOADING))
        elif target.probe is None:
            self._emit(ReplicaUpsert(target.pool, target.address, target.slots, Phase.WARM))
        else:
            self._emit(ReplicaUpsert(target.pool, target.address, target.slots, Phase.LOADING))
            self._tasks[key] = asyncio.create_task(
                self._watch(target, target.probe), name=f"probe {target.address}"
            )

    def remove(self, pool: str, address: str) -> None:
        key = (pool, address)
        if self._targets.pop(key, None) is None:
            return
        self._cancel(key)
        self._emit(ReplicaRemoved(pool, address))

    def known(self, pool: str | None = None) -> list[tuple[str, str]]:
        return [k for k in self._targets if pool is None or k[0] == pool]

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _cancel(self, key: tuple[str, str]) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def _watch(self, target: Target, probe: ProbeConfig) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        warm = False
        failures = 0
        url = f"http://{target.address}{probe.path}"
        limit = aiohttp.ClientTimeout(total=probe.timeout_seconds)
        while True:
            if await self._check(url, probe.expected_status, limit):
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
