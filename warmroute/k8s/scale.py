"""Scaling through Kubernetes: the scale subresource, and pod-deletion-cost hints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kubernetes import client as k8s

from warmroute.config import PoolConfig, ScaleTarget

logger = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class KubernetesScaler:
    """A ``Scaler`` for pools with ``kubernetes.target``. Blocking calls run in threads.

    ``pod_name(pool, address)`` maps a replica address to its pod (from discovery).
    """

    def __init__(self, api: k8s.ApiClient, pod_name: Callable[[str, str], str | None]) -> None:
        self._apps = k8s.AppsV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._pod_name = pod_name

    @staticmethod
    def _target(pool: PoolConfig) -> tuple[str, ScaleTarget]:
        kube = pool.kubernetes
        if kube is None or kube.target is None:
            raise ValueError(f"pool {pool.name} has no kubernetes.target to scale")
        return kube.namespace, kube.target

    async def get_replicas(self, pool: PoolConfig) -> int:
        ns, target = self._target(pool)
        read = (
            self._apps.read_namespaced_deployment_scale
            if target.kind == "Deployment"
            else self._apps.read_namespaced_stateful_set_scale
        )
        scale = await asyncio.to_thread(read, target.name, ns)
        return int(scale.spec.replicas or 0)

    async def set_replicas(self, pool: PoolConfig, replicas: int) -> None:
        ns, target = self._target(pool)
        patch = (
            self._apps.patch_namespaced_deployment_scale
            if target.kind == "Deployment"
            else self._apps.patch_namespaced_stateful_set_scale
        )
        await asyncio.to_thread(patch, target.name, ns, {"spec": {"replicas": replicas}})

    async def mark_deletion_costs(self, pool: PoolConfig, costs: dict[str, int]) -> None:
        """Annotate pods so the ReplicaSet removes idle replicas, never busy ones."""
        ns, _ = self._target(pool)
        for address, cost in costs.items():
            name = self._pod_name(pool.name, address)
            if name is None:
                continue
            body = {"metadata": {"annotations": {DELETION_COST: str(cost)}}}
            await asyncio.to_thread(self._core.patch_namespaced_pod, name, ns, body)
