"""``xds:``: the protocol variant the bootstrap asks for, and how a new config version
rolls out over a fleet of Envoys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from warmroute.config._base import StrictModel


class RolloutConfig(StrictModel):
    """How a new config version reaches a fleet of Envoys."""

    # Nodes that get a new version first; if empty, the first `canary_share` of connected
    # nodes (sorted by node id, at least one).
    canary_nodes: list[str] = []
    canary_share: float = Field(default=0.1, ge=0, le=1)
    # After every canary ACKed, wait this long without a NACK before promoting.
    soak_seconds: float = Field(default=10.0, ge=0, le=86_400)


class XdsConfig(StrictModel):
    # `sotw` (StreamAggregatedResources) or `delta` (DeltaAggregatedResources): what the
    # generated bootstrap asks Envoy to speak. The server always speaks both.
    variant: Literal["sotw", "delta"] = "sotw"
    rollout: RolloutConfig = RolloutConfig()
