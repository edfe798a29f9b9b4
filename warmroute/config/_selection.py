"""Which replica a pool's request gets besides the policy: prefix and session affinity
(``affinity:``) and outlier ejection (``outlier_detection:``).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from warmroute.config._base import HeaderName, StrictModel, located
from warmroute.state.affinity import AffinitySpec
from warmroute.state.outlier import OutlierSpec


class AffinityConfig(StrictModel):
    """How ``policy: prefix_affinity`` recognises related requests (README "Affinity")."""

    # A preferred replica wins only if it has at most this many more requests in flight
    # than the least busy free replica.
    max_imbalance: int = Field(default=2, ge=0, le=100_000)
    # Prompt characters per hashed block; 0: no prompt hashing (session affinity only, and
    # in own-Envoy mode the body is then never sent to warmroute).
    block_chars: int = Field(default=256, ge=0, le=1_000_000)
    max_blocks: int = Field(default=128, ge=1, le=4096)
    # Requests with the same value of this header go to the replica that served the
    # session last (when free, within max_imbalance).
    session_header: HeaderName | None = None
    # Keys (block hashes, sessions) remembered per pool, least recently granted dropped.
    memory: int = Field(default=65_536, ge=1, le=10_000_000)

    def spec(self) -> AffinitySpec:
        return AffinitySpec(
            max_imbalance=self.max_imbalance,
            block_chars=self.block_chars,
            max_blocks=self.max_blocks,
            session_header=self.session_header or "",
            memory=self.memory,
        )


class OutlierConfig(StrictModel):
    """Replicas whose requests fail stop getting leases for a while (README "Outlier
    detection"; Envoy's own cannot see requests pinned with override_host)."""

    enabled: bool = True
    # Failures in a row (5xx but 503, connection failure, reset, timeout) that eject a
    # replica; 0: never on this test alone.
    consecutive_failures: int = Field(default=5, ge=0, le=1_000_000)
    # Eject when at least this share of its requests over window_seconds failed, once it
    # had failure_ratio_min_requests there; null: never on this test alone.
    failure_ratio: float | None = Field(default=0.5, gt=0, le=1, allow_inf_nan=False)
    failure_ratio_min_requests: int = Field(default=20, ge=1, le=1_000_000)
    window_seconds: float = Field(default=30.0, gt=0, le=86_400, allow_inf_nan=False)
    # Ejected for base x its ejections in a row, at most max_ejection_seconds.
    base_ejection_seconds: float = Field(default=10.0, gt=0, le=86_400, allow_inf_nan=False)
    max_ejection_seconds: float = Field(default=300.0, gt=0, le=7 * 86_400, allow_inf_nan=False)
    # At most this share of the pool's warm replicas ejected at once; at least one if it
    # has two or more, never all of them.
    max_ejection_percent: int = Field(default=50, ge=0, le=100)
    # A replica answering 503 or 429 itself (full) takes no lease this long; 0: none.
    full_backoff_seconds: float = Field(default=1.0, ge=0, le=3600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _max_covers_base(self) -> OutlierConfig:
        if self.max_ejection_seconds < self.base_ejection_seconds:
            raise located(
                f"max_ejection_seconds ({self.max_ejection_seconds:g}) is below "
                f"base_ejection_seconds ({self.base_ejection_seconds:g}): expected at least it",
                "max_ejection_seconds",
            )
        return self

    def spec(self) -> OutlierSpec:
        return OutlierSpec(
            enabled=self.enabled,
            consecutive_failures=self.consecutive_failures,
            failure_ratio=self.failure_ratio,
            failure_ratio_min_requests=self.failure_ratio_min_requests,
            window_seconds=self.window_seconds,
            base_ejection_seconds=self.base_ejection_seconds,
            max_ejection_seconds=self.max_ejection_seconds,
            max_ejection_percent=self.max_ejection_percent,
            full_backoff_seconds=self.full_backoff_seconds,
        )
