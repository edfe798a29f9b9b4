"""Kubernetes: the API client and leader election (top-level ``kubernetes:``), and a pool's
replicas found as Pods (a pool's ``kubernetes:``) or from an ``InferencePool``
(``inference_pool:``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from warmroute.config._base import Name, StrictModel


class ScaleTarget(StrictModel):
    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: Name


class KubernetesPoolConfig(StrictModel):
    """Discover this pool's replicas as Pods (list + watch) instead of a static list."""

    namespace: Name = "default"
    selector: dict[str, str] = Field(min_length=1)  # matchLabels of the model-server pods
    port: int | str = 8000  # container port (number, or the name of a declared port)
    target: ScaleTarget | None = None  # what autoscaling scales (scale subresource)


class InferencePoolRef(StrictModel):
    """Discover this pool's replicas from a Gateway API Inference Extension ``InferencePool``
    (``inference.networking.k8s.io/v1``): its ``spec.selector.matchLabels`` picks the Pods
    (in the InferencePool's namespace), and each ready Pod IP x each ``spec.targetPorts``
    number is one replica ``ip:port``."""

    namespace: Name = "default"
    name: Name


class LeaderElectionConfig(StrictModel):
    """One instance leases requests; the others serve xDS and stand by."""

    enabled: bool = False
    namespace: Name = "default"
    lease_name: Name = "warmroute-leader"
    identity: str | None = None  # default: hostname-pid
    # A standby takes over once it has seen the Lease record unchanged for this long, timed
    # on its own monotonic clock (never by comparing clocks with the holder's renewTime).
    lease_seconds: float = Field(default=15.0, gt=0, le=3600)
    # The leader renews this often while renewals succeed.
    renew_seconds: float = Field(default=5.0, gt=0, le=3600)
    # The leader stops leading by itself unless a renewal it started within this long
    # succeeded; below lease_seconds, so it has stopped before any standby may take over.
    # Default: two thirds of lease_seconds (client-go's 10 s of 15 s).
    renew_deadline_seconds: float | None = Field(default=None, gt=0, le=3600)
    # A failed call is retried after this long, and a standby polls this often.
    # Default: renew_seconds, at most 2 s (client-go's retry period).
    retry_seconds: float | None = Field(default=None, gt=0, le=3600)
    # Each API call gives up after this long (the leader's also when its deadline comes).
    # Default: the renew deadline.
    request_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    # A new leader treats every slot as taken until the replica's metrics show otherwise,
    # or this long has passed (the old leader's requests may still be running).
    takeover_grace_seconds: float = Field(default=30.0, ge=0, le=86_400)

    @property
    def renew_deadline(self) -> float:
        if self.renew_deadline_seconds is not None:
            return self.renew_deadline_seconds
        return self.lease_seconds * 2 / 3

    @property
    def retry(self) -> float:
        return (
            self.retry_seconds if self.retry_seconds is not None else min(self.renew_seconds, 2.0)
        )

    @property
    def request_timeout(self) -> float:
        if self.request_timeout_seconds is not None:
            return self.request_timeout_seconds
        return self.renew_deadline

    @model_validator(mode="after")
    def _deadline_before_expiry(self) -> LeaderElectionConfig:
        deadline = self.renew_deadline
        if deadline >= self.lease_seconds:
            raise ValueError(
                f"renew_deadline_seconds ({deadline:g}) must be below lease_seconds "
                f"({self.lease_seconds:g}): the leader must stop leading before a standby "
                "may take over"
            )
        for key, value in (("renew_seconds", self.renew_seconds), ("retry_seconds", self.retry)):
            if value >= deadline:
                raise ValueError(
                    f"{key} ({value:g}) must be below the renew deadline ({deadline:g}, "
                    "renew_deadline_seconds or two thirds of lease_seconds): the leader "
                    "would stop leading between two renewals"
                )
        return self


class KubernetesConfig(StrictModel):
    kubeconfig: str | None = None  # default: in-cluster config, else ~/.kube/config
    # Tests and local API servers: talk to this URL with no credentials.
    api_url: str | None = None
    leader_election: LeaderElectionConfig = LeaderElectionConfig()
