"""The endpoint picker as the control plane wires it: picker + health + TLS on one port.

``ControlPlane`` builds one ``PickerService`` when ``epp.enabled`` (``serve --epp``) and
registers it on its gRPC server *instead of* ADS, the own-Envoy ext_proc servicer and the
access log: a gateway owns Envoy's config, and the request's end comes from the ext_proc
stream itself. The own-Envoy path is untouched by this mode.
"""

from __future__ import annotations

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2_grpc

from warmroute.config import Config
from warmroute.epp import tls
from warmroute.epp.health import PickerHealth
from warmroute.epp.protocol import EndpointPicker, PickerSettings
from warmroute.extproc.outliers import OutlierReporter
from warmroute.metrics import Metrics
from warmroute.state import Registry


def settings(cfg: Config) -> PickerSettings:
    return PickerSettings(
        pool=cfg.epp_pool,
        model_header=cfg.routing.model_header,
        max_body_bytes=cfg.routing.max_body_bytes,
    )


class PickerService:
    """Owns the picker servicer and its health service. Use from the event loop thread."""

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        cfg: Config,
        outliers: OutlierReporter | None = None,
    ) -> None:
        self._registry = registry
        self.picker = EndpointPicker(registry, metrics, settings(cfg), outliers)
        self.health = PickerHealth(self._ready)

    def _ready(self) -> bool:
        return self.picker.serving and self.picker.settings.pool in self._registry.pools

    def add_to(self, server: grpc.aio.Server) -> None:
        ep_grpc.add_ExternalProcessorServicer_to_server(self.picker, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)

    @staticmethod
    def credentials(cfg: Config, source: str = "<config>") -> grpc.ServerCredentials | None:
        """The port's TLS credentials per ``epp.tls`` (None: plaintext)."""
        return tls.server_credentials(cfg, source)

    def configure(self, cfg: Config) -> None:
        """Adopt a reloaded config (pool, model header, body limit)."""
        self.picker.settings = settings(cfg)
        self.health.changed()

    def set_serving(self, serving: bool) -> None:
        """Lease requests (leader) or answer 503 (standby)."""
        self.picker.serving = serving
        self.health.changed()

    def stopping(self) -> None:
        """Health turns NOT_SERVING for good; new requests get 503."""
        self.picker.serving = False
        self.health.stopping()
