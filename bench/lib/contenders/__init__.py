"""The systems under test. Each is an async context manager that starts its own simulated
replicas (:class:`~bench.lib.contenders.base.Sims`), exposes one HTTP ``port`` for clients, and
stops everything it started."""

from __future__ import annotations

from bench.lib.contenders.base import Backends, Contender
from bench.lib.util import LogDir

NAMES = ("envoy-rr", "envoy-lr", "celery", "warmroute")


def make(name: str, backends: Backends, logs: LogDir) -> Contender:
    """A contender by name (see NAMES); imports only what that contender needs."""
    if name in ("envoy-rr", "envoy-lr"):
        from bench.lib.contenders.envoy_static import StaticEnvoy

        return StaticEnvoy(name, backends, logs)
    if name == "celery":
        from bench.lib.contenders.celery_queue import CeleryQueue

        return CeleryQueue(name, backends, logs)
    if name == "warmroute":
        from bench.lib.contenders.warmroute import Warmroute

        return Warmroute(name, backends, logs)
    raise ValueError(f"unknown contender {name!r}; expected one of {', '.join(NAMES)}")
