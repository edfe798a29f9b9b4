"""warmroute (``warmroute serve``, its own process) and a real Envoy in front of two real
vLLM replicas, checked at the replicas' own metrics.

While 24 clients stream completions through Envoy (the model only in the JSON body,
adapters by name), a monitor reads both replicas' ``/metrics`` every 20 ms with warmroute's
own parser: no replica may ever hold more than its slots, running plus waiting (every pool
has ``slots: 4`` = ``--max-num-seqs 4`` and its replicas' ``metrics:`` scraped), and every
answer must be a whole 200 stream.

A pool's models are served by every replica of the pool, and an address belongs to one
pool (the config refuses it in two), so "adapter X only on replica B" is expressed today
by splitting the replicas into pools: the second test does that. The first puts both
replicas in one pool, so both must serve every adapter the pool lists: ``a1`` is loaded
onto ``a`` at run time for it.

Known to fail now and then: vLLM (uvicorn) closes a keep-alive connection idle for 5 s,
and a request Envoy sends on it at that moment is answered 503 "upstream connect error or
disconnect/reset before headers. reset reason: connection termination" (README, "Against
a real vLLM"). Found here and fixed: a scrape lagging a long engine step reclaimed leases
Envoy still counted, and a replica got twice its slots
(``tests/unit/test_state_stale_scrape.py``); the failure message gives warmroute's
``warmroute_leases_reconciled_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.helpers import free_port, wait_for
from tests.vllm.client import Answer, completion, idle, metrics_text, session
from tests.vllm.conftest import SLOTS, Replicas
from tests.vllm.server import VllmServer
from warmroute.config import Config
from warmroute.discovery.signals import parse_signals
from warmroute.envoy_process import EnvoyProcess
from warmroute.soak import ControlPlaneProcess
from warmroute.xds.bootstrap import ads_bootstrap, to_json

pytestmark = pytest.mark.timeout(600)
CLIENTS, ROUNDS, TOKENS = 24, 2, 120
MODELS = ("tiny", "a0", "a1")


def _pool(name: str, models: list[str], servers: tuple[VllmServer, ...]) -> dict[str, Any]:
    return {
        "name": name,
        "models": models,
        "slots": SLOTS,
        "max_request_seconds": 120,
        "queue": {"timeout_seconds": 120},
        # A loaded vLLM on this 2-core machine takes over a second to answer /health (with
        # the default 1 s timeout, replicas flapped out of Envoy's endpoints mid-test).
        "probe": {"path": "/health", "interval_seconds": 0.2, "timeout_seconds": 5},
        "metrics": {"interval_seconds": 0.2},
        "replicas": [s.address for s in servers],
    }


@contextlib.asynccontextmanager
async def front(
    tmp_path: Path, pools: list[dict[str, Any]]
) -> AsyncIterator[tuple[ControlPlaneProcess, str]]:
    """``warmroute serve`` with ``pools``, and an Envoy bootstrapped from it."""
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    raw = {
        "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": admin},
        "pools": pools,
    }
    path = tmp_path / "warmroute.yaml"
    path.write_text(yaml.safe_dump(raw))
    async with contextlib.AsyncExitStack() as cleanup:
        serve = ControlPlaneProcess(path, admin, tmp_path / "serve.log")
        cleanup.push_async_callback(serve.stop)
        await serve.start()
        cfg = Config.model_validate(raw)
        envoy = EnvoyProcess(to_json(ads_bootstrap(cfg, node_id="envoy-0")), cfg.envoy.admin)
        cleanup.push_async_callback(envoy.stop)
        await envoy.start()
        yield serve, f"http://{listen}"


async def _state(serve: ControlPlaneProcess, http: aiohttp.ClientSession) -> dict[str, Any]:
    state = await serve.state(http)
    return state or {}


@dataclass
class Peaks:
    """Per replica, the most it held (running + waiting) in any scrape, and what it named."""

    in_flight: dict[str, int] = field(default_factory=dict)
    adapters: dict[str, set[str]] = field(default_factory=dict)
    scrapes: dict[str, int] = field(default_factory=dict)


async def monitor(
    http: aiohttp.ClientSession, server: VllmServer, peaks: Peaks, stop: asyncio.Event
) -> None:
    """Scrape ``server`` until ``stop``, a scrape at most every 20 ms (a scrape of a busy
    vLLM itself takes longer: ``Peaks.scrapes`` says how many there were)."""
    key = server.address
    while not stop.is_set():
        s = parse_signals(await metrics_text(http, server))
        peaks.in_flight[key] = max(peaks.in_flight.get(key, 0), s.in_flight or 0)
        if s.lora is not None and s.lora.busy_adapters:
            peaks.adapters.setdefault(key, set()).update(s.lora.busy_adapters)
        peaks.scrapes[key] = peaks.scrapes.get(key, 0) + 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


def _successes(text: str) -> float:
    return sum(
        value
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
        for value in [float(line.rsplit(" ", 1)[1])]
    )


@dataclass
class Run:
    answers: list[tuple[str, Answer]]
    peaks: Peaks
    served: dict[str, float]  # requests each replica finished (its vllm:request_success_total)
    took: float
    reconciled: float  # leases warmroute reclaimed from its scrapes (should stay 0 here)


async def run_traffic(
    tmp_path: Path, replicas: Replicas, pools: list[dict[str, Any]], models: tuple[str, ...]
) -> Run:
    """``CLIENTS`` clients, client ``i`` asking for ``models[i % len(models)]``, each
    sending ``ROUNDS`` streams one after the other, through a fresh warmroute + Envoy."""
    servers = replicas.both
    async with session() as http, front(tmp_path, pools) as (serve, url):
        expected = sum(len(p["replicas"]) for p in pools)

        async def routable() -> bool:
            state = await _state(serve, http)
            reps = [r for p in state.get("pools", []) for r in p["replicas"]]
            return (not state.get("fence", {}).get("active", True) and len(reps) == expected
                    and all(r["phase"] == "warm" for r in reps))  # fmt: skip

        await wait_for(routable, timeout=60, what="every pool's replicas warm and routable")
        for server in servers:
            await idle(http, server)
        before = {s.address: _successes(await metrics_text(http, s)) for s in servers}

        peaks, stop = Peaks(), asyncio.Event()
        watchers = [asyncio.create_task(monitor(http, s, peaks, stop)) for s in servers]
        answers: list[tuple[str, Answer]] = []

        async def client(i: int) -> None:
            model = models[i % len(models)]
            for _ in range(ROUNDS):
                answers.append((model, await completion(http, url, model, TOKENS)))

        started = time.monotonic()
        try:
            await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        finally:
            stop.set()
            await asyncio.gather(*watchers)
        took = time.monotonic() - started

        async def settled() -> bool:
            return (await _state(serve, http)).get("leases") == 0

        await wait_for(settled, timeout=30, what="no lease left in warmroute")
        async with http.get(f"http://{serve.admin}/metrics") as r:
            reconciled = sum(
                float(line.rsplit(" ", 1)[1])
                for line in (await r.text()).splitlines()
                if line.startswith("warmroute_leases_reconciled_total{")
            )
        served = {s.address: _successes(await metrics_text(http, s)) - before[s.address]
                  for s in servers}  # fmt: skip
    print(
        f"\n{len(answers)} streams of {TOKENS} tokens in {took:.1f} s; peak in flight "
        f"{peaks.in_flight} over {peaks.scrapes} scrapes; served {served}; "
        f"adapters named {peaks.adapters}; leases reconciled {reconciled}"
    )
    return Run(answers, peaks, served, took, reconciled)


def check_promises(run: Run) -> None:
    bad = [(m, x) for m, x in run.answers if (x.status, x.done, x.tokens) != (200, True, TOKENS)]
    assert not bad, bad[:5]
    assert len(run.answers) == CLIENTS * ROUNDS
    # The promise, at the servers' own metrics: never more than `slots` inside.
    over = f"{run.peaks.in_flight}; leases reclaimed by scrapes: {run.reconciled}"
    assert max(run.peaks.in_flight.values()) <= SLOTS, over
    # ... while the load did fill them (the test measured something).
    assert max(run.peaks.in_flight.values()) == SLOTS, run.peaks.in_flight
    assert sum(run.served.values()) == CLIENTS * ROUNDS, run.served


async def test_one_pool_of_two_vllms_never_overfills_either(
    tmp_path: Path, replicas: Replicas
) -> None:
    a, b = replicas.both
    load = {"lora_name": "a1", "lora_path": str(replicas.loras / "adapter-1")}
    async with session() as http:
        async with http.post(a.url + "/v1/load_lora_adapter", json=load) as r:
            assert r.status == 200, await r.text()
        try:
            pool = _pool("main", list(MODELS), (a, b))
            run = await run_traffic(tmp_path, replicas, [pool], MODELS)
        finally:
            async with http.post(a.url + "/v1/unload_lora_adapter", json={"lora_name": "a1"}):
                pass
    check_promises(run)
    assert all(n > 0 for n in run.served.values()), run.served  # both replicas worked
    for server in (a, b):  # both served adapters
        assert run.peaks.adapters.get(server.address), run.peaks.adapters


async def test_adapters_go_only_to_the_replicas_that_serve_them(
    tmp_path: Path, replicas: Replicas
) -> None:
    a, b = replicas.both  # a serves a0; b serves a0 and a1
    pools = [_pool("left", ["a0"], (a,)), _pool("right", ["tiny", "a1"], (b,))]
    run = await run_traffic(tmp_path, replicas, pools, MODELS)
    check_promises(run)
    # a0 only on a, a1 only on b, as the server's own LoRA gauge names them.
    assert run.peaks.adapters.get(a.address) == {"a0"}, run.peaks.adapters
    assert run.peaks.adapters.get(b.address) == {"a1"}, run.peaks.adapters
