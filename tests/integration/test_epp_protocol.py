"""The endpoint picker protocol over real gRPC, with this test playing the gateway (no Envoy).

The gateway's side is what the Gateway API Inference Extension's Envoy config makes Envoy
do: request/response headers SEND, bodies FULL_DUPLEX_STREAMED, trailers SEND.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certs import make_pki
from tests.helpers import free_port, wait_for
from warmroute import config as config_mod
from warmroute.config import Config
from warmroute.envoy_names import DESTINATION_KEY, LB_NAMESPACE, METADATA_NAMESPACE
from warmroute.epp import PickerService
from warmroute.epp.messages import CHUNK_BYTES, SUBSET_KEY, SUBSET_NAMESPACE
from warmroute.server import ControlPlane

MODEL = "m"
REPLICAS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _config(tls: Any = False, **routing: Any) -> Config:
    return Config.model_validate(
        {
            "control": {
                "start_fence": False,
                "grpc": f"127.0.0.1:{free_port()}",
                "admin": f"127.0.0.1:{free_port()}",
            },
            "routing": routing,
            "pools": [
                {
                    "name": "p",
                    "models": [MODEL],
                    "probe": None,
                    "queue": {"max_waiting": 1, "timeout_seconds": 30},
                    "replicas": REPLICAS,
                }
            ],
            "epp": {"enabled": True, "tls": tls},
        }
    )


async def _start(cfg: Config) -> ControlPlane:
    plane = ControlPlane(cfg)
    await plane.start()
    await wait_for(lambda: _warm(plane) == len(REPLICAS), what="replicas warm")
    return plane


def _warm(plane: ControlPlane) -> int:
    return sum(r.phase == "warm" for p in plane.registry.view().pools for r in p.replicas)


def _leases(plane: ControlPlane) -> int:
    return plane.registry.view().leases


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    cp = await _start(_config(max_body_bytes=4096 * 1024))
    yield cp
    await cp.stop()


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        yield ch


# -- the gateway's messages ---------------------------------------------------------------


def _headers(
    request_id: str,
    *,
    method: str = "POST",
    end_of_stream: bool = False,
    hint: Sequence[str] | str | None = None,
    **extra: str,
) -> ep.ProcessingRequest:
    req = ep.ProcessingRequest()
    req.request_headers.end_of_stream = end_of_stream
    hs = req.request_headers.headers.headers
    fields = {":method": method, ":path": "/v1/completions", "x-request-id": request_id, **extra}
    for k, v in fields.items():
        hs.append(base_pb2.HeaderValue(key=k, raw_value=v.encode()))
    if hint is not None:
        value = req.metadata_context.filter_metadata[SUBSET_NAMESPACE].fields[SUBSET_KEY]
        if isinstance(hint, str):
            value.string_value = hint
        else:
            value.list_value.SetInParent()
            for entry in hint:
                value.list_value.values.add().string_value = entry
    return req


def _body(data: bytes, end_of_stream: bool, phase: str = "request_body") -> ep.ProcessingRequest:
    req = ep.ProcessingRequest()
    body = getattr(req, phase)
    body.body = data
    body.end_of_stream = end_of_stream
    return req


def _response_headers(status: int = 200, end_of_stream: bool = False) -> ep.ProcessingRequest:
    req = ep.ProcessingRequest()
    req.response_headers.end_of_stream = end_of_stream
    req.response_headers.headers.headers.append(
        base_pb2.HeaderValue(key=":status", raw_value=str(status).encode())
    )
    return req


def _prompt(size: int) -> bytes:
    head = json.dumps({"model": MODEL, "stream": True, "prompt": ""}).encode()[:-2]
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def _send_request(
    call: Any, request_id: str, body: bytes, *, chunk: int = 16_384, **headers: Any
) -> tuple[ep.ProcessingResponse, bytes]:
    """Headers, then the body in chunks; returns the headers answer and the echoed body."""
    await call.write(_headers(request_id, **headers))
    for start in range(0, len(body), chunk):
        await call.write(_body(body[start : start + chunk], start + chunk >= len(body)))
    first = await call.read()
    if first.HasField("immediate_response"):
        return first, b""
    echoed = bytearray()
    while True:
        resp = await call.read()
        streamed = resp.request_body.response.body_mutation.streamed_response
        assert len(streamed.body) <= CHUNK_BYTES
        echoed += streamed.body
        if streamed.end_of_stream:
            return first, bytes(echoed)


def _destination(resp: ep.ProcessingResponse) -> tuple[str, str, str]:
    """(header value, envoy.lb metadata value, lease id)."""
    mutation = resp.request_headers.response.header_mutation
    header = [
        h.header.raw_value.decode() for h in mutation.set_headers if h.header.key == DESTINATION_KEY
    ]
    assert len(header) == 1
    fields = resp.dynamic_metadata.fields
    meta = fields[LB_NAMESPACE].struct_value.fields[DESTINATION_KEY].string_value
    lease = fields[METADATA_NAMESPACE].struct_value.fields["lease"].string_value
    return header[0], meta, lease


def _error(resp: ep.ProcessingResponse) -> tuple[int, str]:
    imm = resp.immediate_response
    return imm.status.code, json.loads(imm.body)["error"]["code"]


async def _finish_response(call: Any) -> None:
    await call.write(_response_headers(200))
    assert (await call.read()).HasField("response_headers")
    await call.write(_body(b"data: [DONE]\n\n", True, "response_body"))
    await call.read()


# -- tests ---------------------------------------------------------------------------------


async def test_health_serving_for_every_name(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        names = ("", "liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor")
        for name in names:
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == SERVING, name
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"))
        assert (await watch.read()).status == SERVING
        plane.front_end.set_serving(False)  # a standby: readiness drops, liveness stays
        assert (await watch.read()).status == NOT_SERVING
        live = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert live.status == SERVING
        plane.front_end.stopping()
        for name in names:
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == NOT_SERVING, name
        watch.cancel()


async def test_header_equals_metadata_and_body_echoed(channel: grpc.aio.Channel) -> None:
    stub = ep_grpc.ExternalProcessorStub(channel)
    for size, chunk in ((1_000, 16_384), (1_000_000, 10_000)):
        body = _prompt(size)
        call = stub.Process()
        first, echoed = await _send_request(call, f"r{size}", body, chunk=chunk)
        header, meta, lease = _destination(first)
        assert header == meta and header in REPLICAS and len(lease) == 32
        common = first.request_headers.response
        assert common.clear_route_cache
        lengths = [h.header.raw_value for h in common.header_mutation.set_headers]
        assert str(len(body)).encode() in lengths  # content-length of the echoed body
        assert echoed == body
        await _finish_response(call)
        call.cancel()


async def test_lease_held_through_response_released_at_its_end(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    stub = ep_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    await _send_request(call, "r1", _prompt(500))
    assert _leases(plane) == 1
    await call.write(_response_headers(200))
    assert (await call.read()).HasField("response_headers")
    for i in range(3):  # SSE chunks: each echoed at once, the lease still held
        await call.write(_body(f"data: {i}\n\n".encode(), False, "response_body"))
        streamed = (await call.read()).response_body.response.body_mutation.streamed_response
        assert streamed.body == f"data: {i}\n\n".encode() and not streamed.end_of_stream
        assert _leases(plane) == 1
    await call.write(_body(b"data: [DONE]\n\n", True, "response_body"))
    streamed = (await call.read()).response_body.response.body_mutation.streamed_response
    assert streamed.end_of_stream
    assert _leases(plane) == 0  # released before the echo of the last chunk
    assert await call.read() is grpc.aio.EOF  # and our side of the stream ends
    metrics = plane.metrics.exposition().decode()
    assert 'warmroute_requests_total{outcome="success",pool="p"} 1.0' in metrics


async def test_lease_released_on_response_trailers(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    call = ep_grpc.ExternalProcessorStub(channel).Process()
    await _send_request(call, "r1", _prompt(500))
    await call.write(_response_headers(200))
    await call.read()
    await call.write(_body(b"partial", False, "response_body"))
    await call.read()
    assert _leases(plane) == 1
    trailers = ep.ProcessingRequest()
    trailers.response_trailers.SetInParent()
    await call.write(trailers)
    assert (await call.read()).HasField("response_trailers")
    assert _leases(plane) == 0


async def test_lease_released_when_the_gateway_cancels(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    stub = ep_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    await _send_request(call, "r1", _prompt(500))
    await call.write(_response_headers(200))
    await call.read()
    assert _leases(plane) == 1
    call.cancel()  # the client left mid-response: Envoy resets the stream
    await wait_for(lambda: _leases(plane) == 0, what="lease released on reset")
    # A stream that ends (half-close) without a response end releases too.
    call = stub.Process()
    await _send_request(call, "r2", _prompt(500))
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert _leases(plane) == 0


async def test_subset_hint_obeyed_and_disjoint_subset_refused(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    stub = ep_grpc.ExternalProcessorStub(channel)
    hints: list[Sequence[str] | str] = [
        [REPLICAS[2]],
        f"{REPLICAS[1]}, 192.0.2.1:80",  # comma-separated; unknown entries are ignored
        ["10.0.0.1"],  # a bare IP names every replica on it
    ]
    expected = [REPLICAS[2], REPLICAS[1], REPLICAS[0]]
    for hint, want in zip(hints, expected, strict=True):
        for i in range(3):
            call = stub.Process()
            first, _ = await _send_request(call, f"h{i}", _prompt(300), hint=hint)
            assert _destination(first)[0] == want
            await _finish_response(call)
    for hint in (["192.0.2.1:8000"], []):
        call = stub.Process()
        first, _ = await _send_request(call, "x", _prompt(300), hint=hint)
        assert _error(first) == (503, "no_eligible_endpoint")
    assert _leases(plane) == 0


async def test_get_without_body_routed_on_headers(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    call = ep_grpc.ExternalProcessorStub(channel).Process()
    await call.write(_headers("g1", method="GET", end_of_stream=True))
    first = await call.read()
    header, meta, _ = _destination(first)
    assert header == meta
    keys = [h.header.key for h in first.request_headers.response.header_mutation.set_headers]
    assert "content-length" not in keys
    await call.write(_response_headers(200, end_of_stream=True))
    assert (await call.read()).HasField("response_headers")
    assert _leases(plane) == 0


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {}, 400, "invalid_body"),
        (b'{"prompt": "hi"}', {}, 400, "missing_model"),
        (b'{"model": "other"}', {}, 404, "unknown_model"),
        (b'{"model": "m"}', {"x-model": "other"}, 400, "model_mismatch"),
    ],
)
async def test_bad_requests_refused(
    plane: ControlPlane,
    channel: grpc.aio.Channel,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    call = ep_grpc.ExternalProcessorStub(channel).Process()
    first, _ = await _send_request(call, "bad", body, **headers)
    assert _error(first) == (status, code)
    assert await call.read() is grpc.aio.EOF
    assert _leases(plane) == 0


async def test_too_large_body_refused_with_413() -> None:
    plane = await _start(_config(max_body_bytes=2048))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
            call = ep_grpc.ExternalProcessorStub(ch).Process()
            body = _prompt(5000)
            await call.write(_headers("big"))
            for start in range(0, len(body), 1000):
                try:
                    await call.write(_body(body[start : start + 1000], start + 1000 >= len(body)))
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    break  # refused mid-body: the stream is already closed
            assert _error(await call.read()) == (413, "body_too_large")
            assert _leases(plane) == 0
    finally:
        await plane.stop()


async def test_queue_full_429_and_queued_request_served_when_a_slot_frees(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    stub = ep_grpc.ExternalProcessorStub(channel)
    holders = []
    for i in range(len(REPLICAS)):  # every slot taken
        call = stub.Process()
        await _send_request(call, f"hold{i}", _prompt(300))
        holders.append(call)
    waiting = stub.Process()
    queued = asyncio.create_task(_send_request(waiting, "queued", _prompt(300)))
    await wait_for(lambda: plane.registry.view().pools[0].waiting == 1, what="one queued")
    refused = stub.Process()
    first, _ = await _send_request(refused, "shed", _prompt(300))
    assert _error(first) == (429, "queue_full")
    await _finish_response(holders[0])  # a slot frees: the queued request gets it
    first, echoed = await asyncio.wait_for(queued, 10)
    assert _destination(first)[0] in REPLICAS and echoed == _prompt(300)
    # A queued request whose client leaves leaves nothing behind.
    gone = stub.Process()
    leaving = asyncio.create_task(_send_request(gone, "gone", _prompt(300)))
    await wait_for(lambda: plane.registry.view().pools[0].waiting == 1, what="queued again")
    gone.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    await wait_for(lambda: plane.registry.view().pools[0].waiting == 0, what="waiter withdrawn")
    for call in [*holders[1:], waiting]:
        call.cancel()
    await wait_for(lambda: _leases(plane) == 0, what="every lease released")


async def test_tls_on_by_default_with_a_self_signed_certificate() -> None:
    plane = await _start(_config(tls=True))
    try:
        pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", plane.grpc_port))
        creds = grpc.ssl_channel_credentials(root_certificates=pem.encode())
        options = (("grpc.ssl_target_name_override", "localhost"),)
        target = f"127.0.0.1:{plane.grpc_port}"
        async with grpc.aio.secure_channel(target, creds, options=options) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            resp = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
            assert resp.status == SERVING
        async with grpc.aio.insecure_channel(target) as ch:  # plaintext is refused
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
    finally:
        await plane.stop()


async def test_tls_from_configured_files(tmp_path: Any) -> None:
    pki = make_pki(tmp_path)
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    plane = await _start(_config(tls=tls))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        options = (("grpc.ssl_target_name_override", pki.server_name),)
        target = f"127.0.0.1:{plane.grpc_port}"
        async with grpc.aio.secure_channel(target, creds, options=options) as ch:
            call = ep_grpc.ExternalProcessorStub(ch).Process()
            first, echoed = await _send_request(call, "tls", _prompt(2000))
            assert _destination(first)[0] in REPLICAS and echoed == _prompt(2000)
            call.cancel()
        await wait_for(lambda: _leases(plane) == 0, what="lease released")
    finally:
        await plane.stop()


async def test_body_ended_by_request_trailers(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """With trailers, no body chunk carries end_of_stream: the trailers end the body."""
    call = ep_grpc.ExternalProcessorStub(channel).Process()
    body = _prompt(150_000)
    await call.write(_headers("t1"))
    for start in range(0, len(body), 50_000):
        await call.write(_body(body[start : start + 50_000], False))
    trailers = ep.ProcessingRequest()
    trailers.request_trailers.SetInParent()
    await call.write(trailers)
    header, meta, _ = _destination(await call.read())
    assert header == meta
    echoed = bytearray()
    while True:
        resp = await call.read()
        if resp.HasField("request_trailers"):
            break
        streamed = resp.request_body.response.body_mutation.streamed_response
        assert not streamed.end_of_stream  # the trailers that follow end the body
        echoed += streamed.body
    assert echoed == body
    await _finish_response(call)
    assert _leases(plane) == 0


async def test_served_endpoint_other_than_leased_is_counted(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    call = ep_grpc.ExternalProcessorStub(channel).Process()
    first, _ = await _send_request(call, "s1", _prompt(300))
    leased = _destination(first)[0]
    other = next(r for r in REPLICAS if r != leased)
    headers = _response_headers(200)
    fields = headers.metadata_context.filter_metadata[LB_NAMESPACE].fields
    fields["x-gateway-destination-endpoint-served"].string_value = other
    await call.write(headers)
    await call.read()
    await call.write(_body(b"{}", True, "response_body"))
    await call.read()
    metrics = plane.metrics.exposition().decode()
    assert 'warmroute_upstream_mismatch_total{pool="p"} 1.0' in metrics


async def test_reload_keeps_the_mode_and_adopts_new_limits(tmp_path: Any) -> None:
    """A reloaded file that does not enable the mode (it came from `serve --epp`) keeps the
    picker and applies the new settings."""
    raw = _config().model_dump(mode="json")
    raw["epp"] = {"tls": False}  # `enabled` left out, as with `serve --epp`
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    plane = ControlPlane(config_mod.enable_epp(config_mod.load(path)), config_path=path)
    await plane.start()
    try:
        await wait_for(lambda: _warm(plane) == len(REPLICAS), what="replicas warm")
        raw["routing"]["max_body_bytes"] = 2048
        path.write_text(yaml.safe_dump(raw))
        assert await plane.reload_from_file()
        assert isinstance(plane.front_end, PickerService)
        assert plane.front_end.picker.settings.max_body_bytes == 2048
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
            call = ep_grpc.ExternalProcessorStub(ch).Process()
            await call.write(_headers("big"))
            await call.write(_body(_prompt(3000), True))
            assert _error(await call.read()) == (413, "body_too_large")
    finally:
        await plane.stop()
