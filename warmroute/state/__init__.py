"""The authoritative state core: pure, synchronous, no I/O (see docs in each module)."""

from warmroute.state.ask import Ask
from warmroute.state.events import ReplicaEvent, ReplicaExternalLoad, ReplicaRemoved, ReplicaUpsert
from warmroute.state.lease import EndReason, Lease
from warmroute.state.pool import Pool, PoolSpec
from warmroute.state.registry import Registry
from warmroute.state.replica import Capacity, Phase, Replica
from warmroute.state.snapshot import PoolLoad, PoolView, RegistryView, ReplicaLoad, ReplicaView
from warmroute.state.waiters import Waiter, WaitState

__all__ = [
    "Ask",
    "Capacity",
    "EndReason",
    "Lease",
    "Phase",
    "Pool",
    "PoolLoad",
    "PoolSpec",
    "PoolView",
    "Registry",
    "RegistryView",
    "Replica",
    "ReplicaEvent",
    "ReplicaExternalLoad",
    "ReplicaLoad",
    "ReplicaRemoved",
    "ReplicaUpsert",
    "ReplicaView",
    "WaitState",
    "Waiter",
]
