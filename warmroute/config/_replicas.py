"""A pool's replicas: listed (``replicas:``) or simulated (``simulate:``), probed until warm
(``probe:``), their metrics scraped (``metrics:``), their number scaled (``autoscale:``).
Replicas found in Kubernetes are configured in ``_kubernetes``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationInfo, field_validator, model_validator

from warmroute.config._base import IpPort, StrictModel


class ProbeConfig(StrictModel):
    path: Annotated[str, Field(pattern=r"^/")] = "/health"
    expected_status: int = Field(default=200, ge=100, le=599)
    interval_seconds: float = Field(default=0.5, gt=0, le=3600)
    timeout_seconds: float = Field(default=1.0, gt=0, le=600)


class ReplicaConfig(StrictModel):
    address: IpPort
    slots: int | None = Field(default=None, ge=1, le=100_000)


Slots = Annotated[int, Field(ge=1, le=100_000)]
_SLOTS = TypeAdapter(Slots)
_SLOTS_LIST = TypeAdapter(Annotated[list[Slots], Field(min_length=1)])


class SimulateConfig(StrictModel):
    """Start simulated replicas for this pool (``warmroute up`` only)."""

    replicas: int = Field(default=4, ge=0, le=256)
    # Concurrent requests per simulated replica: one number for all, or a list with one
    # per replica (`[1, 2, 4]`; its length is `replicas` unless set). Default: the pool's.
    slots: Slots | list[Slots] | None = None
    host: str = "127.0.0.1"
    base_port: int = Field(default=9001, ge=1, le=65535)
    load_seconds: float = Field(default=2.0, ge=0)
    distribution: Literal["fixed", "lognormal"] = "lognormal"
    median_ms: float = Field(default=200.0, gt=0)
    sigma: float = Field(default=0.5, ge=0)
    seed: int | None = None
    # A request with max_tokens (or max_completion_tokens) takes ttft + tokens * per_token;
    # one without, a sample of the distribution above.
    ttft_ms: float = Field(default=20.0, ge=0, le=3_600_000, allow_inf_nan=False)
    per_token_ms: float = Field(default=5.0, ge=0, le=600_000, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _replicas_from_slots(cls, data: Any) -> Any:
        slots = data.get("slots") if isinstance(data, dict) else None
        if isinstance(slots, list) and len(slots) > 1 and "replicas" not in data:
            return {**data, "replicas": len(slots)}
        return data

    @field_validator("slots", mode="before")
    @classmethod
    def _slots(cls, value: Any, info: ValidationInfo) -> Any:
        # Validated here so an error names `slots` or `slots[i]`, not a union member.
        if value is None:
            return None
        if not isinstance(value, list):
            return _SLOTS.validate_python(value)
        slots = _SLOTS_LIST.validate_python(value)
        replicas = info.data.get("replicas")
        if len(slots) > 1 and replicas is not None and len(slots) != replicas:
            raise ValueError(
                f"lists {len(slots)} slot counts for {replicas} replicas: give one per "
                "replica, or a single number for all"
            )
        return slots

    def slots_of(self, index: int, default: int) -> int:
        """Slots of simulated replica ``index``; ``default`` (the pool's) if none are set."""
        if self.slots is None:
            return default
        if isinstance(self.slots, int):
            return self.slots
        return self.slots[index] if len(self.slots) > 1 else self.slots[0]


class AutoscaleConfig(StrictModel):
    """Request-time scaling: queued demand asks for replicas at once, idle pools shrink."""

    min_replicas: int = Field(default=0, ge=0, le=10_000)
    max_replicas: int = Field(default=8, ge=1, le=10_000)
    # At least this long between scale-ups. 0 is safe: each decision counts the capacity
    # already on its way (loading, or asked for and not yet discovered).
    scale_up_interval_seconds: float = Field(default=0.0, ge=0, le=3600)
    # A pool with no request for this long scales down to min_replicas.
    idle_seconds: float = Field(default=300.0, gt=0, le=7 * 86_400)
    # every_wait: one replica per waiter not covered by capacity on its way. predictive:
    # start one only when it would serve the last waiter sooner than the warm ones
    # (learned service time vs cold start) or the wait exceeds the queue timeout. Opt-in:
    # it trusts cold_start_seconds until a cold start is measured, so set that first.
    mode: Literal["every_wait", "predictive"] = "every_wait"
    # A replica's cold start (LOADING to WARM) until one is measured in this pool.
    cold_start_seconds: float = Field(default=30.0, gt=0, le=86_400, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class ScrapeConfig(StrictModel):
    """Read the model server's own metrics (vLLM, SGLang, Triton names) to spot traffic
    warmroute did not lease."""

    path: Annotated[str, Field(pattern=r"^/")] = "/metrics"
    interval_seconds: float = Field(default=2.0, gt=0, le=3600)
    # A replica reporting fewer requests than warmroute leased it has lost some ends of
    # requests (e.g. the access-log stream broke): leases older than this are reclaimed.
    reconcile_after_seconds: float = Field(default=5.0, gt=0, le=86_400)
