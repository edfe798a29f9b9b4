"""Replicas listed in the config (and simulated ones), made warm by their probe."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from warmroute.config import Config, PoolConfig
from warmroute.discovery.probe import Prober, Readiness, Target
from warmroute.state import ReplicaEvent


class StaticDiscovery:
    """Follows the config: ``update`` after every reload adds and removes replicas."""

    def __init__(self, emit: Callable[[ReplicaEvent], None]) -> None:
        self.prober = Prober(emit)

    async def update(self, cfg: Config, kept: Sequence[PoolConfig] = ()) -> None:
        """Follow ``cfg``; ``kept`` are pools a reload dropped that Envoys not yet on the
        new version still route to: their replicas stay probed (and leasable) until then."""
        wanted = {
            (p.name, r.address): Target(p.name, r.address, p.replica_slots(r), p.probe)
            for p in [*cfg.pools, *kept]
            if p.kubernetes is None
            for r in p.all_replicas()
        }
        for pool, address in self.prober.known():
            if (pool, address) not in wanted:
                self.prober.remove(pool, address)
        for target in wanted.values():
            self.prober.set(target, Readiness.READY)

    async def close(self) -> None:
        await self.prober.close()
