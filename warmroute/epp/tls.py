"""TLS for the picker's port: gateways connect to endpoint pickers over TLS.

The Gateway API Inference Extension's Envoy config reaches its picker with an
``UpstreamTlsContext`` whose validation context is empty: any certificate is accepted, so a
picker needs a certificate but nobody to sign it. ``epp.tls`` chooses:

* ``on`` (the default): ``control.tls`` if configured (its files, and client certificates
  if it requires them), else a self-signed certificate made at start, in memory only;
* ``{cert_file, key_file}``: those files;
* ``off``: plaintext (a gateway configured without TLS to the picker).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warmroute.config import Config, EppTlsFiles
from warmroute.errors import ConfigError

logger = logging.getLogger(__name__)

_VALIDITY = dt.timedelta(days=365)


def self_signed(host: str = "") -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed server certificate for it: ``(cert, key)`` PEM.

    The certificate names ``host`` (if given), ``localhost``, this machine's host name and
    127.0.0.1, so a client that does check names finds one it can use.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname() or "localhost"
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(hostname)]
    ips = {ipaddress.ip_address("127.0.0.1")}
    if host:
        try:
            ips.add(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            names.append(x509.DNSName(host))
    names.extend(x509.IPAddress(ip) for ip in sorted(ips, key=str))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmroute endpoint picker")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_credentials(cfg: Config, source: str = "<config>") -> grpc.ServerCredentials | None:
    """The picker port's credentials per ``epp.tls``; None for plaintext.

    Raises ConfigError naming the key if a configured file cannot be read.
    """
    tls = cfg.epp.tls
    if tls is False:
        return None
    if isinstance(tls, EppTlsFiles):
        cert = _read(tls.cert_file, "epp.tls.cert_file", source)
        key = _read(tls.key_file, "epp.tls.key_file", source)
        return grpc.ssl_server_credentials([(key, cert)])
    control = cfg.control.tls
    if control is not None:
        cert = _read(control.cert_file, "control.tls.cert_file", source)
        key = _read(control.key_file, "control.tls.key_file", source)
        ca = (
            _read(control.client_ca_file, "control.tls.client_ca_file", source)
            if control.client_ca_file
            else None
        )
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
    cert, key = self_signed(cfg.control.grpc.rpartition(":")[0])
    logger.info("endpoint picker TLS: self-signed certificate made at start")
    return grpc.ssl_server_credentials([(key, cert)])


def _read(path: str, key: str, source: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"{key}: cannot read {path}: {exc.strerror}"]) from exc
