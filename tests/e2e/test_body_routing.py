"""Routing by the JSON body's model through a real Envoy (json_to_metadata -> ext_proc).

Each test checks what the replicas actually received and what warmroute leased, not only
the status codes clients saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from tests.e2e.stack import MODEL, Stack, StackFactory, client
from tests.helpers import wait_for

JSON = {"content-type": "application/json"}
PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)


def _granted(stack: Stack) -> float:
    return stack.metric("warmroute_leases_granted_total")


def _received(stack: Stack) -> int:
    return sum(r.stats().received for r in stack.replicas)


async def test_model_only_in_the_body_is_routed_and_pinned(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=2, slots=1, service_ms=20)
    await stack.wait_warm()
    async with client() as http:

        async def post(path: str) -> int:
            body = {"messages": [{"role": "user", "content": "hi"}], "model": MODEL}
            async with http.post(stack.url + path, json=body) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(post(p) for p in PATHS for _ in range(4)))
    await stack.wait_idle()
    assert statuses == [200] * 20
    assert _received(stack) == 20
    assert _granted(stack) == 20
    assert stack.full_hits() == 0
    assert max(r.stats().max_in_flight for r in stack.replicas) == 1
    assert stack.metric("warmroute_upstream_mismatch_total") == 0
    assert stack.metric("warmroute_requests_total", outcome="success") == 20


async def test_header_and_body_must_agree(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    async with client() as http:
        same = {"model": MODEL, "prompt": "x"}
        async with http.post(
            stack.url + "/v1/completions", json=same, headers={"x-model": MODEL}
        ) as r:
            assert r.status == 200
        other = {"model": "another-model", "prompt": "x"}
        async with http.post(
            stack.url + "/v1/completions", json=other, headers={"x-model": MODEL}
        ) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "model_mismatch"
    await stack.wait_idle()
    assert _received(stack) == 1
    assert _granted(stack) == 1


async def test_bad_bodies_get_their_documented_answer_and_lease_nothing(
    stack_factory: StackFactory,
) -> None:
    cases: list[tuple[str, bytes | None, dict[str, str], int, str]] = [
        ("no model", b'{"prompt": "hi"}', JSON, 400, "missing_model"),
        ("empty object", b"{}", JSON, 400, "missing_model"),
        ("not JSON", b'{"model": "sim-', JSON, 400, "invalid_body"),
        ("a JSON array", b'["model"]', JSON, 400, "missing_model"),
        ("not a JSON type", b'{"model": "sim-model"}', {"content-type": "text/plain"}, 400,
         "invalid_body"),
        ("unknown model", b'{"model": "nope"}', JSON, 404, "unknown_model"),
        ("model not a string", b'{"model": 7}', JSON, 404, "unknown_model"),
        ("empty model", b'{"model": ""}', JSON, 400, "missing_model"),
        ("no body at all", None, {}, 400, "missing_model"),
        ("binary body", b"\x00\x01", {"content-type": "application/octet-stream"}, 400,
         "invalid_body"),
    ]  # fmt: skip
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    async with client() as http:
        for name, body, headers, status, code in cases:
            method = "GET" if body is None else "POST"
            async with http.request(
                method, stack.url + "/v1/chat/completions", data=body, headers=headers
            ) as r:
                got = await r.json(content_type=None)
                assert (r.status, got["error"]["code"]) == (status, code), name
                assert got["error"]["request_id"], name
    assert _received(stack) == 0
    assert _granted(stack) == 0
    assert stack.plane.registry.view().leases == 0


async def test_curl_style_form_content_type_is_read(stack_factory: StackFactory) -> None:
    """``curl -d '{...}'`` without a content-type header sends form-urlencoded."""
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    async with (
        client() as http,
        http.post(
            stack.url + "/v1/completions",
            data=json.dumps({"model": MODEL, "prompt": "hi"}),
            headers={"content-type": "application/x-www-form-urlencoded"},
        ) as r,
    ):
        assert r.status == 200
    assert _received(stack) == 1


async def test_body_in_many_small_chunks(stack_factory: StackFactory) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "y" * 5000}], "model": MODEL})
    raw = body.encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    async with (
        client() as http,
        http.post(stack.url + "/v1/chat/completions", data=chunks(), headers=JSON) as r,
    ):
        assert r.status == 200
    await stack.wait_idle()
    assert _received(stack) == 1


async def test_body_over_the_limit_is_413_before_any_lease(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1, routing_extra={"max_body_bytes": 64 * 1024})
    await stack.wait_warm()
    body = {"model": MODEL, "prompt": "z" * (100 * 1024)}
    async with client() as http, http.post(stack.url + "/v1/completions", json=body) as r:
        assert r.status == 413
        error = (await r.json(content_type=None))["error"]
        assert error["code"] == "body_too_large"
        assert "65536" in error["message"]
    assert _received(stack) == 0
    assert _granted(stack) == 0


async def test_models_list_takes_no_slot_even_when_all_are_busy(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=2, slots=1)
    await stack.wait_warm()
    async with client() as http:
        # Hold both slots with long requests, then ask for the models.
        hold = [
            asyncio.create_task(
                http.post(
                    stack.url + "/v1/completions",
                    json={"model": MODEL},
                    headers={"x-sim-service-ms": "3000"},
                )
            )
            for _ in range(2)
        ]
        await wait_for(lambda: stack.plane.registry.view().leases == 2, 10, what="2 leases")
        for path in ("/v1/models", "/v1/models/", f"/v1/models/{MODEL}"):
            async with http.get(stack.url + path, headers={"x-model": MODEL}) as r:
                assert r.status == 200, path
                got = await r.json()
        entry = got
        assert entry["id"] == MODEL and entry["pool"] == "main"
        assert (entry["warm_slots"], entry["free_slots"]) == (2, 0)
        async with http.get(stack.url + "/v1/models") as r:
            listed = await r.json()
        assert listed["object"] == "list"
        assert [m["id"] for m in listed["data"]] == [MODEL]
        async with http.get(stack.url + "/v1/models/unknown") as r:
            assert r.status == 404
        assert stack.plane.registry.view().pools[0].waiting == 0
        for task in hold:
            (await task).close()
    await stack.wait_idle()
    assert _received(stack) == 2
    assert _granted(stack) == 2


async def test_gateway_health_never_reaches_a_replica(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    async with client() as http:
        for path in ("/health", "/healthz", "/readyz", "/livez"):
            async with http.get(stack.url + path, headers={"x-model": MODEL}) as r:
                assert r.status == 200, path
    assert _received(stack) == 0
    assert _granted(stack) == 0


async def test_outcome_series_exported_at_zero_from_the_start(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1)
    text = stack.plane.metrics.exposition().decode()
    assert 'warmroute_upstream_mismatch_total{pool="main"} 0.0' in text
    for outcome in (
        "success",
        "upstream_error",
        "rejected_queue_full",
        "rejected_missing_model",
    ):
        line = f'warmroute_requests_total{{outcome="{outcome}",pool="main"}} 0.0'
        assert line in text, outcome
    assert 'warmroute_requests_total{outcome="rejected_unknown_model",pool="none"} 0.0' in text


async def test_verify_body_model_off_skips_the_parse_on_header_routes(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=1, routing_extra={"verify_body_model": False})
    await stack.wait_warm()
    async with client() as http:
        other = {"model": "another-model", "prompt": "x"}
        async with http.post(
            stack.url + "/v1/completions", json=other, headers={"x-model": MODEL}
        ) as r:
            assert r.status == 200  # the header routes; the body is not read
        async with http.post(stack.url + "/v1/completions", json={"model": MODEL}) as r:
            assert r.status == 200  # no header: the body is still read
    await stack.wait_idle()
    assert _received(stack) == 2
