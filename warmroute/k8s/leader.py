"""Leader election on a ``coordination.k8s.io/v1`` Lease, with optimistic concurrency.

The holder renews ``renewTime`` every ``renew_seconds``; another instance takes over once
``renewTime + leaseDurationSeconds`` has passed. Every write carries the resourceVersion
it read, so of two instances racing for an expired lease exactly one wins (the other gets
409 Conflict). ``on_change(is_leader)`` runs on the event loop at each transition.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from warmroute.config import LeaderElectionConfig

logger = logging.getLogger(__name__)


def _now() -> dt.datetime:
    now = dt.datetime.now(dt.UTC)
    # The client sends datetimes with isoformat(), which drops the fraction when it is
    # zero; the API server requires MicroTime's six digits. Never let it be zero.
    return now if now.microsecond else now.replace(microsecond=1)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class LeaderElector:
    def __init__(
        self,
        api: k8s.ApiClient,
        cfg: LeaderElectionConfig,
        on_change: Callable[[bool], None],
    ) -> None:
        self._api = k8s.CoordinationV1Api(api)
        self._cfg = cfg
        self._on_change = on_change
        self.identity = cfg.identity or f"{socket.gethostname()}-{os.getpid()}"
        self.is_leader = False

    async def run(self) -> None:
        try:
            while True:
                try:
                    leader = await asyncio.to_thread(self._try_acquire_or_renew)
                except Exception as exc:  # API unreachable: a leader that cannot renew steps down
                    logger.warning("leader election %s: %s", self._cfg.lease_name, exc)
                    leader = False
                self._set(leader)
                await asyncio.sleep(self._cfg.renew_seconds)
        finally:
            if self.is_leader:
                await asyncio.to_thread(self._release)
                self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            logger.info(
                "%s %s leadership of lease %s/%s", self.identity,
                "acquired" if leader else "lost", self._cfg.namespace, self._cfg.lease_name,
            )  # fmt: skip
            self._on_change(leader)

    def _try_acquire_or_renew(self) -> bool:
        ns, name = self._cfg.namespace, self._cfg.lease_name
        now = _now()
        try:
            lease = self._api.read_namespaced_lease(name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=name, namespace=ns), spec=self._spec(now, now, 0)
            )
            try:
                self._api.create_namespaced_lease(ns, body)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False  # another instance created it first
                raise
            return True
        spec = lease.spec
        holder = spec.holder_identity
        renewed = _parse(spec.renew_time) or _parse(spec.acquire_time)
        duration = spec.lease_duration_seconds or self._cfg.lease_seconds
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder == self.identity:
            lease.spec = self._spec(_parse(spec.acquire_time) or now, now, spec.lease_transitions)
        elif expired or not holder:
            lease.spec = self._spec(now, now, (spec.lease_transitions or 0) + 1)
        else:
            return False
        try:
            # The read resourceVersion rides along: a concurrent writer makes this 409.
            self._api.replace_namespaced_lease(name, ns, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _spec(self, acquired: dt.datetime, renewed: dt.datetime, transitions: int | None) -> Any:
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self._cfg.lease_seconds),
            acquire_time=_fmt(acquired),
            renew_time=_fmt(renewed),
            lease_transitions=transitions or 0,
        )

    def _release(self) -> None:
        """Give the lease up on shutdown so a standby takes over without waiting."""
        ns, name = self._cfg.namespace, self._cfg.lease_name
        try:
            lease = self._api.read_namespaced_lease(name, ns)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                self._api.replace_namespaced_lease(name, ns, lease)
        except Exception as exc:  # shutting down: the lease will expire anyway
            logger.warning("could not release lease %s: %s", name, exc)
