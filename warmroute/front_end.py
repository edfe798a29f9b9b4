"""How requests reach this control plane: the ``FrontEnd`` protocol, and own-Envoy mode.

One front end is chosen at start (``epp.enabled``, ``warmroute serve --epp``) and owns
the gRPC port's request-path services; both hand every decision to the one ``Director``
(``warmroute.director``), so ``ControlPlane`` calls only this protocol and never asks
which mode it runs in:

* ``OwnEnvoy`` (below): Envoys this control plane configures. ADS gives them their
  config (``warmroute.xds``), ext_proc asks "which replica?" on the request headers
  (``warmroute.extproc.processor``), the gRPC access log says "request finished"
  (``warmroute.extproc.accesslog``); plaintext or ``control.tls``.
* ``PickerService`` (``warmroute.epp.service``): a gateway's Envoy. The endpoint picker
  protocol runs each request's whole ext_proc stream, plus gRPC health; its own TLS.

The load-report service (LRS) and the admin port run in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from warmroute.config import Config, GrpcTlsConfig
from warmroute.director import Director
from warmroute.extproc.accesslog import AccessLogService
from warmroute.extproc.processor import ExternalProcessor
from warmroute.metrics import Metrics
from warmroute.state import Registry
from warmroute.xds.ads import AdsServer
from warmroute.xds.nodes import NodeTable

# How long a start's fence holds slots nobody reported on (``control.start_fence``). A
# request our Envoys routed runs on after we die; Envoy reports it within ~5.5 s (its LRS
# retry), so this is only the bound for an Envoy that never reports.
START_GRACE = 30.0


class FrontEnd(Protocol):
    """What ``ControlPlane`` needs of a mode (module doc). Use from the event loop."""

    @property
    def start_grace(self) -> float:
        """The start fence's default grace (``control.start_fence_grace_seconds``)."""

    @property
    def ads_nodes(self) -> Callable[[], list[str]] | None:
        """The Envoy nodes connected over ADS, whose load reports are complete (None: no
        ADS in this mode)."""

    def describe(self) -> str:
        """What the gRPC port serves, for the start's log line."""

    def bind(self, server: grpc.aio.Server, cfg: Config, source: str) -> int:
        """Register this mode's services on ``server`` and listen on ``control.grpc``.
        Returns the port, 0 if it could not bind. Raises ConfigError for unreadable TLS
        files (``source`` names the config file)."""

    def as_running(self, cfg: Config, source: str) -> Config:
        """A config read from the file, as this mode runs it."""

    def configure(self, cfg: Config) -> None:
        """Adopt a reloaded config."""

    def set_serving(self, serving: bool) -> None:
        """Lease requests (the leader) or refuse them with 503 (a standby)."""

    def stopping(self) -> None:
        """The process is stopping (before the gRPC server drains)."""


class OwnEnvoy:
    """Own-Envoy mode (module doc): ext_proc, access log and ADS on the gRPC port."""

    start_grace = START_GRACE

    def __init__(
        self,
        director: Director,
        registry: Registry,
        metrics: Metrics,
        cfg: Config,
        *,
        ads: AdsServer,
        nodes: NodeTable,
    ) -> None:
        self._director = director
        self.processor = ExternalProcessor(director, registry, cfg.routing.model_header)
        self.access_log = AccessLogService(director, registry, metrics)
        self._ads = ads
        self.ads_nodes: Callable[[], list[str]] | None = nodes.connected

    def describe(self) -> str:
        return "ADS, ext_proc, access log"

    def bind(self, server: grpc.aio.Server, cfg: Config, source: str) -> int:
        ep_grpc.add_ExternalProcessorServicer_to_server(self.processor, server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self.access_log, server)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self._ads, server)
        tls = cfg.control.tls
        if tls is None:
            return int(server.add_insecure_port(cfg.control.grpc))
        return int(server.add_secure_port(cfg.control.grpc, _server_credentials(tls)))

    def as_running(self, cfg: Config, source: str) -> Config:
        return cfg

    def configure(self, cfg: Config) -> None:
        """Read the model header a reload names, as the routes do (the picker's too)."""
        self.processor.model_header = cfg.routing.model_header

    def set_serving(self, serving: bool) -> None:
        self._director.serving = serving
        if not serving:
            # Envoy must report request ends to the new leader, not here.
            self.access_log.close_streams()

    def stopping(self) -> None:
        """Requests keep being leased until the gRPC server stops: their Envoys still
        report their ends while it drains."""


def _server_credentials(tls: GrpcTlsConfig) -> grpc.ServerCredentials:
    def read(path: str) -> bytes:
        return Path(path).read_bytes()

    ca = read(tls.client_ca_file) if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(read(tls.key_file), read(tls.cert_file))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
