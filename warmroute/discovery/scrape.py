"""Read model servers' own metrics to see traffic warmroute did not lease.

If a replica reports more requests than warmroute leased to it (someone calls it
directly, or a previous leader's requests are still running), the difference counts as
busy slots. The load is what the server holds, running plus waiting in its own queue,
as :func:`warmroute.discovery.signals.parse_signals` reads it (vLLM, SGLang, TGI and
Triton names, summed over label sets).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from warmroute.config import Config
from warmroute.discovery.signals import parse_signals
from warmroute.state import Registry, ReplicaEvent, ReplicaExternalLoad

logger = logging.getLogger(__name__)


def running_requests(text: str) -> int | None:
    """Requests a model server reports holding (running or waiting), or None if it reports
    none we know. Raises ``ValueError`` on a malformed line of a metric it reads."""
    return parse_signals(text).in_flight


class MetricsScraper:
    """Scrapes every non-gone replica of pools with ``metrics`` configured.

    ``last_scrape`` stamps each replica's last answer with the registry's clock, which
    the takeover fence compares with its own start.
    """

    def __init__(self, registry: Registry, emit: Callable[[ReplicaEvent], None]) -> None:
        self._registry = registry
        self._clock = registry.clock
        self._emit = emit
        self._pools: dict[str, tuple[str, float]] = {}
        self.last_scrape: dict[tuple[str, str], float] = {}

    def configure(self, cfg: Config) -> None:
        self._pools = {
            p.name: (p.metrics.path, p.metrics.interval_seconds)
            for p in cfg.pools
            if p.metrics is not None
        }

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            next_at: dict[str, float] = {}
            while True:
                now = self._clock()
                for name, (path, interval) in list(self._pools.items()):
                    if next_at.get(name, 0.0) <= now:
                        next_at[name] = now + interval
                        await self._scrape_pool(session, name, path)
                await asyncio.sleep(0.1)

    async def _scrape_pool(self, session: aiohttp.ClientSession, name: str, path: str) -> None:
        addresses = self._registry.addresses(name)  # not GONE; none if the pool is gone
        if not addresses:
            return
        results = await asyncio.gather(
            *(self._fetch(session, f"http://{a}{path}") for a in addresses)
        )
        for address, running in zip(addresses, results, strict=True):
            if running is not None:
                self.last_scrape[(name, address)] = self._clock()
                self._emit(ReplicaExternalLoad(name, address, running, reconcile=True))

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> int | None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status != 200:
                    return None
                return running_requests(await resp.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
