"""`warmroute serve --epp` as a user runs it: a real process serving the picker over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import free_port, wait_for


def _config(path: Path, pools: int = 1) -> tuple[Path, int]:
    port = free_port()
    cfg = {
        "control": {
            "start_fence": False,
            "grpc": f"127.0.0.1:{port}",
            "admin": f"127.0.0.1:{free_port()}",
        },
        "pools": [
            {"name": f"p{i}", "models": [f"m{i}"], "probe": None, "replicas": [f"10.0.0.{i}:80"]}
            for i in range(1, pools + 1)
        ],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path, port


async def _check(port: int) -> int:
    """The readiness status over TLS, trusting whatever certificate the picker shows."""
    pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
    creds = grpc.ssl_channel_credentials(root_certificates=pem.encode())
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor"),
            timeout=2,
        )
        return int(resp.status)


async def test_serve_epp_serves_the_picker_with_a_self_signed_certificate(tmp_path: Path) -> None:
    path, port = _config(tmp_path / "epp.yaml")
    log = (tmp_path / "serve.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmroute", "serve", "--epp", "-c", str(path),
        stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:

        async def serving() -> bool:
            with contextlib.suppress(OSError, grpc.aio.AioRpcError):
                return await _check(port) == health_pb2.HealthCheckResponse.SERVING
            return False

        await wait_for(serving, timeout=30, interval=0.1, what="picker SERVING over TLS")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "endpoint picker for pool 'p1'" in text


async def test_serve_epp_names_the_missing_key(tmp_path: Path) -> None:
    path, _ = _config(tmp_path / "two.yaml", pools=2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmroute", "serve", "--epp", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "epp.pool: set it to one of p1, p2" in out.decode()
