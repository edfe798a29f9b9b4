"""Prefix and session affinity through a real Envoy (own-Envoy mode: the processor asks
Envoy for the body of prefix_affinity pools only, per request, with a mode override).

Each test reads where requests landed at the replicas themselves (``received()``), and
that no replica was ever sent a request while full.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any

import aiohttp

from tests.e2e.stack import (
    MODEL,
    EnvoyFactory,
    PlaneFactory,
    SimFactory,
    Stack,
    StackFactory,
    client,
)
from tests.e2e.test_epp_envoy import _picker_healthy, gateway_bootstrap
from tests.helpers import free_port, wait_for
from warmroute.config import Config

H = {"x-model": MODEL, "content-type": "application/json"}
AFFINITY = {
    "policy": "prefix_affinity",
    "affinity": {"block_chars": 64, "session_header": "x-session-id"},
}
SYSTEM_A = "You are a careful assistant for the accounts team. " * 8
SYSTEM_B = "You translate terse commit messages into plain English. " * 8


def _chat(system: str, question: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
    }


async def _post(
    http: aiohttp.ClientSession, stack: Stack, body: dict[str, Any], **headers: str
) -> tuple[int, str]:
    async with http.post(
        stack.url + "/v1/chat/completions", headers={**H, **headers}, data=json.dumps(body)
    ) as r:
        await r.read()
        return r.status, r.headers.get("x-sim-replica", "")


def _landed(stack: Stack, marker: str) -> set[str]:
    """The replicas that received a request whose body contains ``marker``."""
    return {
        sim.address
        for sim in stack.replicas
        for entry in sim.received()
        if entry.body is not None and marker.encode() in entry.body
    }


async def test_a_shared_prefix_sticks_to_one_replica_and_the_body_arrives_whole(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=3, slots=4, service_ms=5, pool_extra=AFFINITY)
    await stack.wait_warm()
    sent: list[bytes] = []
    async with client() as http:
        for system, tag in ((SYSTEM_A, "a"), (SYSTEM_B, "b")):
            for i in range(5):
                body = _chat(system, f"question {tag}{i}?")
                sent.append(json.dumps(body).encode())
                status, _ = await _post(http, stack, body)
                assert status == 200
    await stack.wait_idle()
    a, b = _landed(stack, "accounts team"), _landed(stack, "commit messages")
    assert len(a) == 1 and len(b) == 1
    # The second prefix went elsewhere: a fresh prompt is a least_loaded pick, and the
    # first prompt's replica is the one used last.
    assert a != b
    # Buffering the body for the decision changed nothing in it.
    got = {e.body_sha256 for sim in stack.replicas for e in sim.received()}
    assert {hashlib.sha256(s).hexdigest() for s in sent} <= got
    assert stack.full_hits() == 0
    assert stack.metric("warmroute_leases_granted_total") == 10


async def test_without_a_shared_prefix_requests_spread(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=3, slots=4, service_ms=5, pool_extra=AFFINITY)
    await stack.wait_warm()
    async with client() as http:
        for i in range(6):
            # Each prompt differs from its first character: no block is shared.
            status, _ = await _post(http, stack, _chat(f"{i} " + SYSTEM_A, "q"))
            assert status == 200
    await stack.wait_idle()
    assert [len(sim.received()) for sim in stack.replicas] == [2, 2, 2]


async def test_a_full_preferred_replica_is_never_chosen(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=3, slots=1, service_ms=5, pool_extra=AFFINITY)
    await stack.wait_warm()
    async with client() as http:
        status, first = await _post(http, stack, _chat(SYSTEM_A, "warm the cache"))
        assert status == 200
        # Three at once, each holding its slot: the preferred replica takes one, the
        # others go to the free replicas rather than wait for it.
        slow = {"x-sim-service-ms": "400"}
        results = await asyncio.gather(
            *(_post(http, stack, _chat(SYSTEM_A, f"q{i}"), **slow) for i in range(3))
        )
    await stack.wait_idle()
    assert [s for s, _ in results] == [200, 200, 200]
    assert {r for _, r in results} == {sim.address for sim in stack.replicas}
    assert first in {r for _, r in results}
    assert stack.full_hits() == 0
    assert max(sim.stats().max_in_flight for sim in stack.replicas) == 1


async def test_session_header_pins_a_session(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=3, slots=4, service_ms=5, pool_extra=AFFINITY)
    await stack.wait_warm()
    async with client() as http:
        seen: dict[str, set[str]] = {"alice": set(), "bob": set()}
        for i in range(4):
            for who in seen:
                # Short prompts (no full block): only the session header steers.
                status, replica = await _post(
                    http, stack, _chat("hi", f"{who} {i}"), **{"x-session-id": who}
                )
                assert status == 200
                seen[who].add(replica)
    await stack.wait_idle()
    assert len(seen["alice"]) == 1 and len(seen["bob"]) == 1
    assert seen["alice"] != seen["bob"]
    for who, replicas in seen.items():
        assert _landed(stack, f"{who} ") == replicas
    assert stack.full_hits() == 0


async def test_decided_on_the_body_still_strips_and_routes_by_body_model(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=2, slots=2, service_ms=5, pool_extra=AFFINITY)
    await stack.wait_warm()
    async with client() as http:
        # A client header naming a lease is stripped, as when deciding on the headers.
        status, _ = await _post(http, stack, _chat(SYSTEM_A, "x"), **{"x-warmroute-lease": "evil"})
        assert status == 200
        # No model header: the body's model routes it (header set in the body's answer).
        async with http.post(
            stack.url + "/v1/chat/completions",
            headers={"content-type": "application/json"},
            data=json.dumps(_chat(SYSTEM_A, "by body")),
        ) as r:
            await r.read()
            assert r.status == 200
    await stack.wait_idle()
    entries = [e for sim in stack.replicas for e in sim.received()]
    assert len(entries) == 2
    assert all("x-warmroute-lease" not in e.headers for e in entries)
    assert all(e.headers.get("x-model") == MODEL for e in entries)
    # Same prefix: both on one replica.
    assert len(_landed(stack, "accounts team")) == 1
    assert stack.metric("warmroute_leases_granted_total") == 2


# -- endpoint-picker mode: the picker has the body anyway ------------------------------------


async def test_epp_prefix_and_session_affinity(
    sim_factory: SimFactory, plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> None:
    sims = [await sim_factory(slots=2, service_ms=5.0, seed=i) for i in range(3)]
    picker_port, listen_port, admin_port = free_port(), free_port(), free_port()
    cfg = Config.model_validate(
        {
            "control": {"grpc": f"127.0.0.1:{picker_port}", "admin": f"127.0.0.1:{free_port()}"},
            "pools": [
                {
                    "name": "main",
                    "models": [MODEL],
                    "slots": 2,
                    "probe": {"path": "/health", "interval_seconds": 0.05},
                    "replicas": [sim.address for sim in sims],
                    **AFFINITY,
                }
            ],
            "epp": {"enabled": True},
        }
    )
    plane = await plane_factory(cfg)
    envoy = await envoy_factory(
        gateway_bootstrap(listen_port, admin_port, picker_port), f"127.0.0.1:{admin_port}"
    )
    await wait_for(lambda: _picker_healthy(envoy.admin), what="picker healthy in Envoy")
    await wait_for(
        lambda: sum(r.phase == "warm" for r in plane.registry.view().pools[0].replicas) == 3,
        what="replicas warm",
    )
    url = f"http://127.0.0.1:{listen_port}/v1/chat/completions"
    landed: dict[str, set[str]] = {"a": set(), "b": set(), "alice": set()}
    async with client() as http:
        for i in range(4):
            # Four requests a round on three replicas: a round-robin would move each key.
            for key, body, headers in (
                ("a", _chat(SYSTEM_A, f"a{i}"), {}),
                ("b", _chat(SYSTEM_B, f"b{i}"), {}),
                ("a", _chat(SYSTEM_A, f"a{i}'"), {}),
                ("alice", _chat("hi", f"alice {i}"), {"x-session-id": "alice"}),
            ):
                sent = {"content-type": "application/json", **headers}
                async with http.post(url, data=json.dumps(body), headers=sent) as r:
                    await r.read()
                    assert r.status == 200
                    landed[key].add(r.headers["x-sim-replica"])
    await wait_for(lambda: plane.registry.view().leases == 0, what="leases released")
    assert all(len(replicas) == 1 for replicas in landed.values()), landed
    assert len({next(iter(r)) for r in landed.values()}) == 3  # three keys, three replicas
    for sim in sims:
        assert sim.stats().received_while_full == 0
        for e in sim.received():  # what each replica got is what the picker chose
            assert e.headers["x-gateway-destination-endpoint"] == sim.address


async def test_a_body_too_big_to_forward_is_decided_on_its_headers(
    stack_factory: StackFactory,
) -> None:
    # Over 3 MiB (one gRPC message could not carry it) but under routing.max_body_bytes.
    stack = await stack_factory(replicas=2, slots=2, service_ms=5, pool_extra=AFFINITY)
    await stack.wait_warm()
    big = json.dumps(_chat(SYSTEM_A, "x" * 5_000_000)).encode()
    async with client() as http:
        async with http.post(
            stack.url + "/v1/chat/completions",
            headers={**H, "x-session-id": "carol"},
            data=io.BytesIO(big),  # aiohttp warns about large raw bytes
        ) as r:
            await r.read()
            assert r.status == 200
            replica = r.headers["x-sim-replica"]
        again, same = await _post(http, stack, _chat("hi", "small"), **{"x-session-id": "carol"})
        assert again == 200
    await stack.wait_idle()
    assert same == replica  # its session was still remembered
    got = [e for sim in stack.replicas for e in sim.received()]
    assert sorted(e.body_bytes for e in got)[-1] == len(big)
    assert stack.full_hits() == 0
