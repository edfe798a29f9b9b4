"""``routing:``: how Envoy finds a request's model, and what it does when warmroute cannot
be reached.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from warmroute.config._base import StrictModel


class RoutingConfig(StrictModel):
    model_header: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "x-model"
    # When warmroute cannot be reached: false (default) answers 503, so no request lands
    # on a busy replica; true lets Envoy route without a lease (its fallback policy,
    # least-request), trading the slot guarantee for availability.
    failure_mode_allow: bool = False
    # With failure_mode_allow false, Envoy's 503 for "warmroute unreachable" carries this
    # Retry-After (and JSON code control_plane_unavailable): a restart takes a second or
    # two, a leader failover up to kubernetes.leader_election.lease_seconds.
    unreachable_retry_after_seconds: int = Field(default=1, ge=1, le=3600)
    # Requests whose model is in the JSON body are buffered whole by Envoy before routing;
    # a body over this size is answered 413 (it would not fit Envoy's buffer).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # Requests that carry the model header are still parsed by Envoy to check that the
    # body names the same model (400 model_mismatch otherwise). false skips that parse on
    # header-routed requests (measured: ~2.7 ms of Envoy CPU per 200 KB prompt; see README);
    # requests without the header are always read.
    verify_body_model: bool = True
