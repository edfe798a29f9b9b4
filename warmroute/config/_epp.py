"""``epp:``: endpoint picker mode, the pool it serves and its port's TLS."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from warmroute.config._base import Name, StrictModel


class EppTlsFiles(StrictModel):
    """The picker port's certificate and key (PEM files)."""

    cert_file: str
    key_file: str


class EppConfig(StrictModel):
    """Endpoint picker mode: a gateway owns Envoy and asks us over ext_proc (the Gateway API
    Inference Extension's endpoint picker protocol). The gRPC port then serves the picker
    (and gRPC health), not ADS or the access log."""

    enabled: bool = False
    # The pool (one InferencePool) this picker serves; default: the only pool.
    pool: Name | None = None
    # on: control.tls if set, else a self-signed certificate made at start; off: plaintext;
    # or {cert_file, key_file}.
    tls: bool | EppTlsFiles = True

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_words(cls, value: Any) -> Any:
        # `tls: on/off` are YAML booleans already; accept the quoted words too.
        if isinstance(value, str) and value.lower() in ("on", "off", "true", "false"):
            return value.lower() in ("on", "true")
        if value is None:
            return False
        if isinstance(value, dict):
            return EppTlsFiles.model_validate(value)  # its errors keep their key paths
        if not isinstance(value, bool | EppTlsFiles):
            raise ValueError(f"expected on, off or {{cert_file, key_file}}; got {value!r}")
        return value
