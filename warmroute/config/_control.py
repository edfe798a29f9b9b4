"""``control:``: the control plane's own ports, what it advertises to Envoy, gRPC TLS, lease
expiry, load reports and the start fence.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from warmroute.config._base import HostPort, StrictModel


class EnvoyClientTls(StrictModel):
    """How Envoy connects to warmroute's gRPC port (files as Envoy sees them)."""

    ca_file: str  # verifies warmroute's certificate
    cert_file: str | None = None  # Envoy's client certificate (mutual TLS)
    key_file: str | None = None
    server_name: str | None = None  # SNI and the name expected in warmroute's certificate


class GrpcTlsConfig(StrictModel):
    """TLS (and, with client_ca_file, mutual TLS) for ADS, ext_proc and the access log."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # require and verify client certificates
    envoy: EnvoyClientTls

    @model_validator(mode="after")
    def _pairs(self) -> GrpcTlsConfig:
        if (self.envoy.cert_file is None) != (self.envoy.key_file is None):
            raise ValueError("envoy.cert_file and envoy.key_file go together")
        if self.client_ca_file and self.envoy.cert_file is None:
            raise ValueError("client_ca_file requires client certificates: set envoy.cert_file")
        return self


class ControlConfig(StrictModel):
    grpc: HostPort = "127.0.0.1:18000"
    admin: HostPort = "127.0.0.1:18001"
    # Envoy reaches ext_proc and the access log here (default: `grpc`). A DNS name makes
    # Envoy resolve it (STRICT_DNS), e.g. a headless Service selecting only the leader.
    advertise: HostPort | None = None
    # Envoy reaches ADS here (default: `advertise`), e.g. a Service selecting every
    # instance, leader or not.
    advertise_xds: HostPort | None = None
    tls: GrpcTlsConfig | None = None
    expire_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    lease_grace_seconds: float = Field(default=5.0, ge=0, le=3600)
    # Envoys report their requests in progress per replica this often (LRS).
    load_report_interval_seconds: float = Field(default=0.5, ge=0.05, le=60)
    # At start, hold every slot until the load on each replica is known (Envoys' load
    # reports, its metrics, or the end of its previous requests); at most this long.
    # Default: 30 s with our own Envoys (a request Envoy routed runs on after we die);
    # 1 s as an endpoint picker (a gateway ends every request whose picker stream broke).
    start_fence: bool = True
    start_fence_grace_seconds: float | None = Field(default=None, ge=0, le=86_400)
