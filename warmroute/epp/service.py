"""The endpoint picker as the control plane runs it: a ``FrontEnd`` (``warmroute.front_end``).

``ControlPlane`` builds one ``PickerService`` when ``epp.enabled`` (``serve --epp``): the
gRPC port then speaks the endpoint picker protocol and gRPC health, *instead of* ADS,
the own-Envoy ext_proc servicer and the access log: a gateway owns Envoy's config, and
the request's end comes from the ext_proc stream itself. Every decision is the
director's, as in own-Envoy mode.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2_grpc

from warmroute import config as config_mod
from warmroute.config import Config
from warmroute.director import Director
from warmroute.epp import tls
from warmroute.epp.health import PickerHealth
from warmroute.epp.protocol import EndpointPicker, PickerSettings
from warmroute.metrics import Metrics
from warmroute.state import Registry

# How long a start's fence holds slots nobody reported on: the gateway ends every request
# whose picker stream broke (measured with the reference gateway config: each answered
# 500, and the replicas saw the disconnect), so only the replicas' reaction to the
# disconnect is left to wait for.
START_GRACE = 1.0


def settings(cfg: Config) -> PickerSettings:
    return PickerSettings(
        pool=cfg.epp_pool,
        model_header=cfg.routing.model_header,
        max_body_bytes=cfg.routing.max_body_bytes,
    )


class PickerService:
    """The picker servicer and its health service on one port. Use from the event loop
    thread. Readiness is the director's ``serving`` and the pool being configured."""

    start_grace = START_GRACE
    ads_nodes: Callable[[], list[str]] | None = None  # no ADS: Envoys are the gateway's

    def __init__(
        self, director: Director, registry: Registry, metrics: Metrics, cfg: Config
    ) -> None:
        self._director = director
        self._registry = registry
        self.picker = EndpointPicker(director, registry, metrics, settings(cfg))
        self.health = PickerHealth(self._ready)

    def _ready(self) -> bool:
        return self._director.serving and self.picker.settings.pool in self._registry.pools

    def describe(self) -> str:
        return f"endpoint picker for pool {self.picker.settings.pool!r}"

    def bind(self, server: grpc.aio.Server, cfg: Config, source: str) -> int:
        """Register the picker and gRPC health on ``server``; listen on ``control.grpc``
        with the port's TLS per ``epp.tls``. Returns the port (0: could not bind)."""
        ep_grpc.add_ExternalProcessorServicer_to_server(self.picker, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        creds = tls.server_credentials(cfg, source)
        if creds is None:
            return int(server.add_insecure_port(cfg.control.grpc))
        return int(server.add_secure_port(cfg.control.grpc, creds))

    def as_running(self, cfg: Config, source: str) -> Config:
        """A config read from the file, as this mode runs it: the mode was chosen at start
        (e.g. `serve --epp`), so a file that does not enable it still does."""
        return config_mod.enable_epp(cfg, source)

    def configure(self, cfg: Config) -> None:
        """Adopt a reloaded config (pool, model header, body limit)."""
        self.picker.settings = settings(cfg)
        self.health.changed()

    def set_serving(self, serving: bool) -> None:
        """Lease requests (leader) or answer 503 (standby); health follows."""
        self._director.serving = serving
        self.health.changed()

    def stopping(self) -> None:
        """Health turns NOT_SERVING for good; new requests get 503."""
        self._director.serving = False
        self.health.stopping()
