"""ADS, ext_proc and the access log over mutual TLS, with certificates made here."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tests.certs import make_pki
from tests.e2e.stack import MODEL, StackFactory, client


@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_envoy_talks_to_warmroute_over_mutual_tls(
    stack_factory: StackFactory, tmp_path: Path, variant: str
) -> None:
    pki = make_pki(tmp_path)
    tls = {
        "cert_file": str(pki.server_cert),
        "key_file": str(pki.server_key),
        "client_ca_file": str(pki.ca),
        "envoy": {
            "ca_file": str(pki.ca),
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
            "server_name": pki.server_name,
        },
    }
    stack = await stack_factory(replicas=1, variant=variant, control_extra={"tls": tls})
    await stack.wait_warm()
    async with client() as http:
        for _ in range(3):
            async with http.post(stack.url + "/v1/x", headers={"x-model": MODEL}) as r:
                assert r.status == 200  # config over ADS, lease over ext_proc: both TLS
    await stack.wait_idle()  # request ends arrived over the TLS access-log stream
    assert stack.plane.rollout.connected() == ["envoy-0"]
    target = f"127.0.0.1:{stack.plane.grpc_port}"

    async def call(channel: grpc.aio.Channel) -> None:
        stream = ep_grpc.ExternalProcessorStub(channel).Process()
        await stream.write(ep.ProcessingRequest())
        await stream.read()

    # Plaintext, and TLS without a client certificate, are both refused.
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await call(ch)
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    options = [("grpc.ssl_target_name_override", pki.server_name)]
    async with grpc.aio.secure_channel(target, creds, options=options) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await call(ch)
