"""A fleet for operator-style end-to-end tests: a control plane fed from a config file, two
real Envoys (one canary) and simulated replicas, plus traffic that records every answer.

The operator's loop is: write the file, reload, watch every Envoy converge. :meth:`Fleet.apply`
does exactly that and returns only when both Envoys' own admin endpoints show the expected
clusters, healthy endpoints, routes and route timeouts, and the rollout has settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.e2e.envoy_admin import get_json
from tests.e2e.stack import metric_total
from tests.helpers import free_port, wait_for
from warmroute import config as config_mod
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.xds.bootstrap import ads_bootstrap, to_json
from warmroute.xds.resources import pool_cluster_name

CANARY = "envoy-0"
NODES = (CANARY, "envoy-1")


@dataclass(frozen=True)
class EnvoyView:
    """What one Envoy is running, read from its admin endpoint (pool clusters only)."""

    routes: dict[str, tuple[str, float]]  # model header value -> (cluster, timeout seconds)
    clusters: frozenset[str]
    healthy: dict[str, frozenset[str]]  # cluster -> addresses Envoy may route new requests to


def _seconds(duration: str) -> float:
    """A JSON protobuf Duration ("30s", "0.500s") in seconds."""
    return float(duration.removesuffix("s"))


async def envoy_view(admin: str) -> EnvoyView:
    dump = await get_json(admin, "/config_dump")
    routes: dict[str, tuple[str, float]] = {}
    clusters: set[str] = set()
    for cfg in dump["configs"]:
        kind = cfg["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            for item in cfg.get("dynamic_active_clusters", []):
                name = item["cluster"]["name"]
                if name.startswith(pool_cluster_name("")):
                    clusters.add(name)
        elif kind == "RoutesConfigDump":
            for item in cfg.get("dynamic_route_configs", []):
                for vh in item["route_config"].get("virtual_hosts", []):
                    for r in vh.get("routes", []):
                        for h in r.get("match", {}).get("headers", []):
                            model = h.get("string_match", {}).get("exact", "")
                            action = r["route"]
                            routes[model] = (action["cluster"], _seconds(action["timeout"]))
    healthy: dict[str, set[str]] = {}
    status = await get_json(admin, "/clusters?format=json")
    for c in status.get("cluster_statuses", []):
        if c["name"] not in clusters:
            continue
        hosts = healthy.setdefault(c["name"], set())
        for h in c.get("host_statuses", []):
            sa = h["address"]["socket_address"]
            if h["health_status"].get("eds_health_status", "HEALTHY") == "HEALTHY":
                hosts.add(f"{sa['address']}:{sa['port_value']}")
    return EnvoyView(routes, frozenset(clusters), {k: frozenset(v) for k, v in healthy.items()})


def expected_view(pools: Iterable[dict[str, Any]]) -> EnvoyView:
    """What every Envoy must run once ``pools`` (config dicts) is rolled out and all warm."""
    routes: dict[str, tuple[str, float]] = {}
    healthy: dict[str, frozenset[str]] = {}
    for p in pools:
        cluster = pool_cluster_name(p["name"])
        for model in p["models"]:
            routes[model] = (cluster, float(p["max_request_seconds"]))
        healthy[cluster] = frozenset(p["replicas"])
    return EnvoyView(routes, frozenset(healthy), healthy)


async def envoy_stats(admin: str, prefix: str) -> dict[str, int]:
    """Counters and gauges of one Envoy whose names start with ``prefix``."""
    data = await get_json(admin, f"/stats?format=json&filter=^{re.escape(prefix)}")
    return {s["name"]: s["value"] for s in data["stats"] if isinstance(s.get("value"), int)}


def write_config(path: Path, base: dict[str, Any], pools: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({**base, "pools": pools}, sort_keys=False))


@dataclass
class Fleet:
    plane: ControlPlane
    envoys: dict[str, EnvoyProcess]  # node id -> its Envoy
    url: str
    path: Path
    base: dict[str, Any]  # every config section but `pools`
    pools: list[dict[str, Any]] = field(default_factory=list)  # as last applied

    def write(self, pools: list[dict[str, Any]], soak_seconds: float | None = None) -> None:
        base = self.base
        if soak_seconds is not None:
            rollout = {**base["xds"]["rollout"], "soak_seconds": soak_seconds}
            base = {**base, "xds": {**base["xds"], "rollout": rollout}}
        write_config(self.path, base, pools)

    async def reload(self, pools: list[dict[str, Any]], soak_seconds: float | None = None) -> None:
        """Write ``pools`` to the config file and reload it (the rollout starts)."""
        await asyncio.to_thread(self.write, pools, soak_seconds)
        assert await self.plane.reload_from_file(), "the control plane rejected a valid file"
        self.pools = pools

    async def apply(self, pools: list[dict[str, Any]], timeout: float = 30.0) -> None:
        """:meth:`reload`, then wait until both Envoys run ``pools``."""
        await self.reload(pools)
        await self.wait_converged(timeout)

    async def views(self) -> dict[str, EnvoyView]:
        return {node: await envoy_view(e.admin) for node, e in self.envoys.items()}

    async def wait_converged(self, timeout: float = 30.0, *, routes_only: bool = False) -> None:
        """Until the rollout is stable, every Envoy on its version, and each Envoy's admin
        shows the pools as last applied: clusters, healthy endpoints, routes and timeouts;
        with ``routes_only``, just the routes (a removed pool's cluster may stay a while)."""
        want = expected_view(self.pools)
        last: dict[str, EnvoyView] = {}

        async def converged() -> bool:
            status = self.plane.rollout.status()
            if status["stage"] != "stable":
                return False
            if any(status["nodes"][n]["config"] != status["stable"] for n in self.envoys):
                return False
            last.update(await self.views())
            if routes_only:
                return all(v.routes == want.routes for v in last.values())
            return all(v == want for v in last.values())

        try:
            await wait_for(converged, timeout, interval=0.05, what="both Envoys on the config")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: want {want}, have {last}") from None

    async def admin_state(self) -> dict[str, Any]:
        state: dict[str, Any] = await get_json(self.plane.config.control.admin, "/state")
        return state

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a control-plane metric's samples whose labels include ``labels``."""
        return metric_total(self.plane, name, **labels)


async def start_sim(
    cleanup: contextlib.AsyncExitStack, *, slots: int, service_ms: float, seed: int
) -> SimReplica:
    sim = SimReplica(slots, 0.0, ServiceTime("fixed", service_ms), seed=seed, model="any")
    cleanup.push_async_callback(sim.stop)
    await sim.start("127.0.0.1", 0)
    return sim


async def start_fleet(
    cleanup: contextlib.AsyncExitStack,
    path: Path,
    pools: list[dict[str, Any]],
    *,
    variant: str,
    soak_seconds: float,
) -> Fleet:
    """The control plane on ``path`` (written from ``pools``), then two Envoys speaking
    ``variant``; returns once both are connected and run the config."""
    base: dict[str, Any] = {
        "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "control": {
            "grpc": f"127.0.0.1:{free_port()}",
            "admin": f"127.0.0.1:{free_port()}",
            # Housekeeping (lease expiry, drained replicas leaving EDS) runs this often:
            # short, so waits on its effects stay short.
            "expire_interval_seconds": 0.1,
        },
        "xds": {
            "variant": variant,
            "rollout": {"canary_nodes": [CANARY], "soak_seconds": soak_seconds},
        },
    }
    await asyncio.to_thread(write_config, path, base, pools)
    cfg = await asyncio.to_thread(config_mod.load, path)
    plane = ControlPlane(cfg, config_path=path)
    cleanup.push_async_callback(plane.stop)
    await plane.start()
    envoys: dict[str, EnvoyProcess] = {}
    for node in NODES:
        # Both share the listener (SO_REUSEPORT): a fresh connection lands on either.
        admin = cfg.envoy.admin if node == CANARY else f"127.0.0.1:{free_port()}"
        boot = ads_bootstrap(cfg, node_id=node, variant=variant)
        boot.admin.address.socket_address.port_value = int(admin.rsplit(":", 1)[1])
        envoy = EnvoyProcess(to_json(boot), admin, log_level="warning")
        cleanup.push_async_callback(envoy.stop)
        await envoy.start()
        envoys[node] = envoy
    fleet = Fleet(plane, envoys, f"http://{cfg.envoy.listen}", path, base, pools)
    await wait_for(lambda: len(plane.rollout.connected()) == len(NODES), what="two Envoys")
    await fleet.wait_converged()
    return fleet


@dataclass(frozen=True)
class Answer:
    seq: int  # 0, 1, ... in the order requests were sent
    model: str
    phase: str  # the test's phase when the request was sent
    status: int
    code: str | None  # the JSON error code of a non-200 answer
    replica: str | None  # the replica that served a 200
    detail: str = ""  # a non-200's body and headers, for the failure message


def client_session() -> aiohttp.ClientSession:
    # A fresh connection per request: the kernel spreads them over both Envoys. No request
    # may wait longer than this; a hang fails the test instead of stalling it.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=60),
    )


class Traffic:
    """Clients sending chat completions (model in the body, as OpenAI's SDK does) in the
    background; every answer is recorded with the phase the test was in when it came."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = "start"
        self.sent = 0  # requests sent so far
        self.answers: list[Answer] = []
        self._workers: dict[str, list[asyncio.Task[None]]] = {}
        self._stop: dict[str, asyncio.Event] = {}
        self._http = client_session()

    async def ask(
        self,
        model: str,
        headers: dict[str, str] | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> Answer:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        seq, phase = self.sent, self.phase
        self.sent += 1
        async with (http or self._http).post(
            self.url + "/v1/chat/completions", json=body, headers=headers
        ) as r:
            text = await r.text()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if r.status == 200:
            answer = Answer(seq, model, phase, 200, None, data["replica"])
        else:
            # warmroute and Envoy answer {"error": {"code": ...}}; a replica {"error": "..."}.
            error = data.get("error") if isinstance(data, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            seen = {k: v for k, v in r.headers.items() if k.lower() not in ("date", "server")}
            detail = f"{text[:300]!r} {seen}"
            answer = Answer(seq, model, phase, r.status, code, None, detail)
        self.answers.append(answer)
        return answer

    def start(self, model: str, workers: int = 1) -> None:
        stop = self._stop.setdefault(model, asyncio.Event())
        stop.clear()

        async def loop() -> None:
            while not stop.is_set():
                await self.ask(model)

        tasks = self._workers.setdefault(model, [])
        tasks += [asyncio.create_task(loop(), name=f"traffic {model}") for _ in range(workers)]

    def check(self) -> None:
        """Raise what ended a client early (a hang must not pass for no traffic)."""
        for tasks in self._workers.values():
            for t in tasks:
                if t.done() and not t.cancelled() and (exc := t.exception()) is not None:
                    raise AssertionError(f"a client of {t.get_name()} failed: {exc!r}") from exc

    async def stop(self, model: str) -> None:
        """Let ``model``'s clients finish their current request, then stop them."""
        self._stop[model].set()
        tasks = self._workers.pop(model, [])
        await asyncio.gather(*tasks)

    async def close(self) -> None:
        for event in self._stop.values():
            event.set()
        tasks = [t for ts in self._workers.values() for t in ts]
        self._workers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.close()

    def of(self, model: str, phase: str | None = None) -> list[Answer]:
        return [a for a in self.answers if a.model == model and phase in (None, a.phase)]
