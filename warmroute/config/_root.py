"""``Config``, the root: one field per top-level key, and the checks that span sections
(unique pool names, models and replica addresses; the picker's pool).
"""

from __future__ import annotations

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from warmroute.config._base import StrictModel, located
from warmroute.config._control import ControlConfig
from warmroute.config._envoy import EnvoyConfig
from warmroute.config._epp import EppConfig
from warmroute.config._kubernetes import KubernetesConfig
from warmroute.config._pools import PoolConfig
from warmroute.config._routing import RoutingConfig
from warmroute.config._xds import XdsConfig
from warmroute.state.pool import PoolSpec


class Config(StrictModel):
    envoy: EnvoyConfig = EnvoyConfig()
    control: ControlConfig = ControlConfig()
    routing: RoutingConfig = RoutingConfig()
    xds: XdsConfig = XdsConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    pools: list[PoolConfig] = Field(min_length=1)
    epp: EppConfig = EppConfig()

    @model_validator(mode="after")
    def _epp_pool(self) -> Config:
        epp = self.epp
        if not epp.enabled:
            return self
        names = [p.name for p in self.pools]
        if epp.pool is None and len(names) > 1:
            problem, loc = f"set it to one of {', '.join(names)} (there are several pools)", "pool"
        elif epp.pool is not None and epp.pool not in names:
            problem, loc = f"{epp.pool!r} is not a pool; expected one of {', '.join(names)}", "pool"
        else:
            return self
        raise ValidationError.from_exception_data(
            "Config",
            [
                InitErrorDetails(
                    type=PydanticCustomError("value_error", problem),
                    loc=("epp", loc),
                    input=epp.pool,
                )
            ],
        )

    @property
    def epp_pool(self) -> str:
        """The pool the endpoint picker serves (``epp.pool``, else the only pool)."""
        return self.epp.pool or self.pools[0].name

    @model_validator(mode="after")
    def _unique(self) -> Config:
        # Each error points at the second occurrence (``at``: its key path), not the top.
        seen_pools: set[str] = set()
        seen_models: dict[str, str] = {}
        seen_addresses: dict[str, str] = {}
        for i, pool in enumerate(self.pools):
            if pool.name in seen_pools:
                raise located(
                    f"pool name {pool.name!r} is used twice; names must be unique",
                    "pools", i, "name",
                )  # fmt: skip
            seen_pools.add(pool.name)
            for k, model in enumerate(pool.models):
                if model in seen_models:
                    raise located(
                        f"model {model!r} is served by pools {seen_models[model]!r} and "
                        f"{pool.name!r}; a model must map to one pool",
                        "pools", i, "models", k,
                    )  # fmt: skip
                seen_models[model] = pool.name
            listed = len(pool.replicas)
            for j, replica in enumerate(pool.all_replicas()):
                if replica.address in seen_addresses:
                    at = ("replicas", j) if j < listed else ("simulate",)
                    raise located(
                        f"replica {replica.address} is listed in pools "
                        f"{seen_addresses[replica.address]!r} and {pool.name!r}",
                        "pools", i, *at,
                    )  # fmt: skip
                seen_addresses[replica.address] = pool.name
        return self

    def specs(self) -> list[PoolSpec]:
        return [p.spec(self.control.lease_grace_seconds) for p in self.pools]

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def max_queue_timeout(self) -> float:
        return max(
            p.priority.max_timeout(p.queue) if p.priority else p.queue.timeout_seconds
            for p in self.pools
        )
