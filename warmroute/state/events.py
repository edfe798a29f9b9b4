"""Typed discovery events: the only way replica membership and phase reach the core."""

from __future__ import annotations

from dataclasses import dataclass

from warmroute.state.replica import Phase


@dataclass(frozen=True, slots=True)
class ReplicaUpsert:
    """A replica exists (or changed) with this many slots and this phase."""

    pool: str
    address: str
    slots: int
    phase: Phase


@dataclass(frozen=True, slots=True)
class ReplicaRemoved:
    """A replica is gone; its in-flight leases finish, then it is forgotten."""

    pool: str
    address: str


@dataclass(frozen=True, slots=True)
class ReplicaExternalLoad:
    """The replica reports this many running requests in total (from its own metrics).

    Whatever exceeds the leases warmroute holds on it counts as busy slots."""

    pool: str
    address: str
    running: int
    # True when ``running`` is the replica's own report (metrics), so leases it no longer
    # has (their end was lost) may be reclaimed; False for a synthetic value (a fence).
    reconcile: bool = False


ReplicaEvent = ReplicaUpsert | ReplicaRemoved | ReplicaExternalLoad
