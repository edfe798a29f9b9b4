"""``pools:``: one pool per entry, its models, slots and policy, with the sections of
``_admission``, ``_selection``, ``_replicas`` and ``_kubernetes``; builds the core's
``PoolSpec``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from warmroute.config._admission import PriorityConfig, QueueConfig, TokensConfig
from warmroute.config._base import Name, StrictModel
from warmroute.config._kubernetes import InferencePoolRef, KubernetesPoolConfig
from warmroute.config._replicas import (
    AutoscaleConfig,
    ProbeConfig,
    ReplicaConfig,
    ScrapeConfig,
    SimulateConfig,
)
from warmroute.config._selection import AffinityConfig, OutlierConfig
from warmroute.state.pool import PoolSpec


class PoolConfig(StrictModel):
    name: Name
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1)
    slots: int = Field(default=1, ge=1, le=100_000)
    policy: Literal["least_loaded", "first_free", "prefix_affinity"] = "least_loaded"
    # Only with policy prefix_affinity (its defaults apply when omitted).
    affinity: AffinityConfig | None = None
    max_request_seconds: float = Field(default=600.0, gt=0, le=7 * 86_400)
    queue: QueueConfig = QueueConfig()
    priority: PriorityConfig | None = None
    # A token budget per replica as well as slots (None: slots only).
    tokens: TokensConfig | None = None
    probe: ProbeConfig | None = ProbeConfig()
    replicas: list[ReplicaConfig] = []
    simulate: SimulateConfig | None = None
    kubernetes: KubernetesPoolConfig | None = None
    inference_pool: InferencePoolRef | None = None
    autoscale: AutoscaleConfig | None = None
    metrics: ScrapeConfig | None = None
    outlier_detection: OutlierConfig = OutlierConfig()

    @model_validator(mode="after")
    def _simulated_slots_cover_autoscale(self) -> PoolConfig:
        sim, scale = self.simulate, self.autoscale
        listed = len(sim.slots) if sim and isinstance(sim.slots, list) else 0
        if scale and 1 < listed < scale.max_replicas:
            raise ValueError(
                f"simulate.slots lists {listed} slot counts but autoscale.max_replicas "
                f"is {scale.max_replicas}: list one per replica the scaler may start, or give "
                "a single number"
            )
        return self

    @model_validator(mode="after")
    def _affinity_needs_its_policy(self) -> PoolConfig:
        if self.affinity is not None and self.policy != "prefix_affinity":
            raise ValueError(
                f"`affinity` only applies with `policy: prefix_affinity` (policy is {self.policy})"
            )
        return self

    @model_validator(mode="after")
    def _one_source(self) -> PoolConfig:
        if self.kubernetes is not None and (self.replicas or self.simulate):
            raise ValueError(
                "a pool gets replicas from `kubernetes` or from `replicas`/`simulate`, not both"
            )
        if self.inference_pool is not None:
            others = [
                key
                for key, value in (
                    ("kubernetes", self.kubernetes),
                    ("replicas", self.replicas),
                    ("simulate", self.simulate),
                )
                if value
            ]
            if others:
                raise ValueError(
                    f"`inference_pool` cannot be combined with `{'`, `'.join(others)}`: a pool "
                    "gets replicas from exactly one source"
                )
            if self.autoscale is not None:
                raise ValueError(
                    "`autoscale` is not supported with `inference_pool` (an InferencePool "
                    "names no workload to scale); scale the model-server workload yourself"
                )
        return self

    @field_validator("replicas", mode="before")
    @classmethod
    def _short_replicas(cls, value: Any) -> Any:
        # Allow `- 127.0.0.1:9001` as shorthand for `- {address: 127.0.0.1:9001}`.
        if isinstance(value, list):
            return [{"address": v} if isinstance(v, str) else v for v in value]
        return value

    def spec(self, lease_grace_seconds: float = 5.0) -> PoolSpec:
        return PoolSpec(
            lease_grace_seconds=lease_grace_seconds,
            reconcile_after_seconds=(self.metrics.reconcile_after_seconds if self.metrics else 5.0),
            name=self.name,
            models=tuple(self.models),
            max_waiting=self.queue.max_waiting,
            queue_timeout=self.queue.timeout_seconds,
            max_request_seconds=self.max_request_seconds,
            policy=self.policy,
            priority=self.priority.spec(self.queue) if self.priority else None,
            tokens=self.tokens.spec() if self.tokens else None,
            affinity=(
                (self.affinity or AffinityConfig()).spec()
                if self.policy == "prefix_affinity"
                else None
            ),
            outlier=self.outlier_detection.spec(),
        )

    def replica_slots(self, replica: ReplicaConfig) -> int:
        return replica.slots if replica.slots is not None else self.slots

    def simulated_replicas(self) -> list[ReplicaConfig]:
        """Simulated replicas started up front (an autoscaled pool starts its own)."""
        sim = self.simulate
        if sim is None or self.autoscale is not None:
            return []
        return [
            ReplicaConfig(address=f"{sim.host}:{sim.base_port + i}", slots=self.simulated_slots(i))
            for i in range(sim.replicas)
        ]

    def simulated_slots(self, index: int) -> int:
        """Slots of simulated replica ``index`` (``simulate.slots``, else the pool's)."""
        return self.simulate.slots_of(index, self.slots) if self.simulate else self.slots

    def all_replicas(self) -> list[ReplicaConfig]:
        return [*self.replicas, *self.simulated_replicas()]
