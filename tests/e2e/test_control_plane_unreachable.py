"""warmroute unreachable: Envoy answers 503 + Retry-After with warmroute's JSON error
(``control_plane_unavailable``), through its local reply mapping, in own-Envoy mode and
behind a gateway (endpoint picker mode); every other answer passes unchanged.

Real Envoy, real control plane, simulated replicas (DESIGN.md fact 13: before this, an
empty 503 with no Retry-After; 500 behind the reference gateway config).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

import aiohttp

from tests.e2e.stack import MODEL, EnvoyFactory, PlaneFactory, SimFactory, Stack, StackFactory
from tests.e2e.stack import client as http_client
from tests.e2e.test_epp_envoy import start_epp_stack
from tests.helpers import wait_for
from warmroute.xds.local_replies import UNAVAILABLE_CODE

H = {"x-model": MODEL}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def error(self) -> dict[str, object]:
        doc = json.loads(self.text)
        assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), self.text
        return doc["error"]


async def _send(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    async with http.post(url, headers=headers or {}, data=body) as r:
        return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text())


def _assert_unavailable(answer: Answer, retry_after: int) -> str:
    """The clean answer for "warmroute unreachable"; returns its request id."""
    assert answer.status == 503, answer
    assert answer.headers.get("content-type") == "application/json", answer
    assert answer.headers.get("retry-after") == str(retry_after), answer
    error = answer.error()
    assert error["code"] == UNAVAILABLE_CODE, answer
    assert error["retry_after_seconds"] == retry_after, answer
    assert "could not be reached" in str(error["message"]), answer
    request_id = str(error["request_id"])
    uuid.UUID(request_id)  # Envoy's own x-request-id
    return request_id


def _assert_not_rewritten(answer: Answer) -> None:
    assert UNAVAILABLE_CODE not in answer.text, answer


def _received(stack: Stack) -> int:
    return sum(r.stats().received for r in stack.replicas)


async def test_control_plane_stopped_gets_json_503_with_retry_after(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(
        replicas=1, queue_timeout=0.5, max_request_seconds=1.5,
        routing_extra={"unreachable_retry_after_seconds": 3},
        # The replica answers 503 and 500 on purpose below: outlier detection would rightly
        # back it off ("full") and the next request would time out in the queue instead.
        pool_extra={"outlier_detection": {"enabled": False}},
    )  # fmt: skip
    await stack.wait_warm()
    url = stack.url + "/v1/x"
    async with http_client() as http:
        # While warmroute runs, nothing is rewritten: a replica's 503 and 500...
        for status in (503, 500):
            answer = await _send(http, url, {**H, "x-sim-status": str(status)})
            assert answer.status == status and "x-sim-replica" in answer.headers, answer
            assert "retry-after" not in answer.headers
            _assert_not_rewritten(answer)
        # ...warmroute's own JSON errors (a 404, and a 503 with its own Retry-After)...
        answer = await _send(http, url, {"x-model": "nope"})
        assert (answer.status, answer.error()["code"]) == (404, "unknown_model"), answer
        holder = asyncio.create_task(_send(http, url, {**H, "x-sim-service-ms": "3000"}))
        await wait_for(lambda: stack.plane.registry.view().leases == 1, what="slot taken")
        answer = await _send(http, url, H)  # waits 0.5 s in the queue
        assert (answer.status, answer.error()["code"]) == (503, "queue_timeout"), answer
        assert answer.headers["retry-after"] == "1"  # warmroute's, not the mapper's 3
        # ...and Envoy's own local replies for a replica (its route timeout: 504).
        answer = await holder
        assert answer.status == 504 and answer.text == "upstream request timeout", answer
        await stack.wait_idle()

        await stack.plane.stop()
        before = _received(stack)
        ids = set()
        for attempt in range(6):
            if attempt % 2:  # the model in the JSON body, as SDKs send it
                answer = await _send(http, url, {"content-type": "application/json"},
                                     json.dumps({"model": MODEL}).encode())  # fmt: skip
            else:
                answer = await _send(http, url, H)
            ids.add(_assert_unavailable(answer, retry_after=3))
        assert len(ids) == 6  # each answer names its own request
        assert _received(stack) == before  # none reached a replica


async def test_control_plane_silent_past_the_message_timeout_gets_json_503(
    stack_factory: StackFactory,
) -> None:
    # ext_proc's message timeout is the longest queue timeout + 5 s: 5.3 s here.
    stack = await stack_factory(replicas=1, queue_timeout=0.3)
    await stack.wait_warm()
    await stack.plane.stop()
    host, port = stack.config.control.grpc.rsplit(":", 1)
    accepted: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept the connection, never answer a byte

    silent = await asyncio.start_server(accept, host, int(port))
    try:
        async with http_client() as http:
            answer = await _send(http, stack.url + "/v1/x", H)
        assert accepted, "Envoy never reached the silent control plane"
        _assert_unavailable(answer, retry_after=1)  # Envoy itself said 504
        assert _received(stack) == 0
    finally:
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_picker_stopped_gets_json_503_through_the_gateway_mapping(
    sim_factory: SimFactory, plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> None:
    """The reference gateway config plus deploy/epp/gateway-local-reply.yaml: its ext_proc
    has no status_on_error, so Envoy alone answers an empty 500."""
    stack = await start_epp_stack(sim_factory, plane_factory, envoy_factory, replicas=1)
    url = f"{stack.url}/v1/completions"
    body = json.dumps({"model": MODEL}).encode()
    headers = {"content-type": "application/json"}
    async with http_client() as http:
        for status in (503, 500):  # a replica's errors pass unchanged
            answer = await _send(http, url, {**headers, "x-sim-status": str(status)}, body)
            assert answer.status == status and "x-sim-replica" in answer.headers, answer
            _assert_not_rewritten(answer)
        # The picker's own JSON errors pass unchanged.
        answer = await _send(http, url, headers, json.dumps({"model": "nope"}).encode())
        assert (answer.status, answer.error()["code"]) == (404, "unknown_model"), answer
        answer = await _send(http, url, {"content-type": "application/json"}, b"{oops")
        assert (answer.status, answer.error()["code"]) == (400, "invalid_body"), answer
        await stack.quiescent()

        await stack.plane.stop()
        before = sum(r.stats().received for r in stack.replicas)
        ids = {_assert_unavailable(await _send(http, url, headers, body), 1) for _ in range(4)}
        assert len(ids) == 4
        assert sum(r.stats().received for r in stack.replicas) == before
