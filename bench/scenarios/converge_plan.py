"""What the converge scenario changes and what each change must make every Envoy show.

The kinds of config change, the pacing (poll period, random pause before a write, time
limit per change), reading Envoy's admin output (``/clusters``, ``/config_dump``) into
clusters' healthy hosts and routes' timeouts, and ``Want``: the state a config produces,
compared with what an Envoy shows. Pure: no I/O. Shared by the scenario (``converge``) and
its page (``converge_report``); imports neither.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.lib.stats import percentile

NODES = ("converge-a", "converge-b")  # the first is the canary
POLL = 0.005  # seconds between admin polls
# Before each write, a random pause up to this long: a config write lands at a random
# moment, not just after the previous change settled (which would phase-lock it to any
# periodic timer in the control plane, e.g. a 1 s file poll).
JITTER = 1.0
STEP_TIMEOUT = 30.0  # seconds for one change to reach every Envoy
PROBE_INTERVAL = 0.05  # the pools' warm probe: a new replica waits at most this for it
KINDS = (
    "add pool",
    "remove pool",
    "route timeout",
    "move replica",
    "add replica",
    "add model alias",
)
ENDPOINT_ONLY = ("move replica", "add replica")

# Names warmroute gives its Envoy resources (the same in every version measured).
CLUSTER_PREFIX = "warmroute_pool_"

Doc = dict[str, Any]


# ---------------------------------------------------------------- pure: Envoy admin parsing


def parse_duration(text: str) -> float:
    """A protobuf JSON Duration (``"600s"``, ``"0.250s"``) in seconds."""
    if not text.endswith("s"):
        raise ValueError(f"not a protobuf duration: {text!r}")
    return float(text[:-1])


def cluster_hosts(doc: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Envoy ``/clusters?format=json`` → cluster name → its HEALTHY hosts (``ip:port``).

    A DRAINING (or otherwise unhealthy) host is not counted: warmroute sends no new request
    there, so for routing it has left the cluster.
    """
    out: dict[str, frozenset[str]] = {}
    for cluster in doc.get("cluster_statuses", []):
        hosts = set()
        for host in cluster.get("host_statuses", []):
            health = host.get("health_status", {}).get("eds_health_status", "HEALTHY")
            sa = host["address"]["socket_address"]
            if health == "HEALTHY":
                hosts.add(f"{sa['address']}:{sa['port_value']}")
        out[cluster["name"]] = frozenset(hosts)
    return out


def route_timeouts(doc: Mapping[str, Any]) -> dict[str, float | None]:
    """Envoy ``/config_dump?resource=dynamic_route_configs`` → route name → its timeout in
    seconds (None: no timeout set). Routes of every route configuration, active ones only."""
    out: dict[str, float | None] = {}
    for entry in doc.get("configs", []):
        config = entry.get("route_config", entry)
        for vhost in config.get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                name = route.get("name")
                if not name:
                    continue
                timeout = route.get("route", {}).get("timeout")
                out[name] = parse_duration(timeout) if timeout is not None else None
    return out


# ---------------------------------------------------------------- pure: what Envoy should show


@dataclass(frozen=True)
class Want:
    """The Envoy state one config should produce. ``None`` values must be absent."""

    clusters: Mapping[str, frozenset[str] | None]  # cluster → exactly these healthy hosts
    routes: Mapping[str, float | None]  # route name → timeout seconds; None: no such route

    def minus(self, before: Want) -> Want:
        """Only the entries that differ from ``before``: what a change must make appear."""
        return Want(
            {k: v for k, v in self.clusters.items() if _differs(before.clusters, k, v)},
            {k: v for k, v in self.routes.items() if _differs(before.routes, k, v)},
        )

    def unmet(
        self,
        clusters: Mapping[str, frozenset[str]] | None,
        routes: Mapping[str, float | None] | None,
    ) -> list[str]:
        """What an Envoy showing ``clusters`` and ``routes`` still lacks (empty: all there).
        A ``None`` argument was not fetched and is skipped."""
        lacking = []
        for name, hosts in self.clusters.items() if clusters is not None else ():
            got = clusters.get(name) if clusters is not None else None
            if hosts is None and got is not None:
                lacking.append(f"cluster {name} still present")
            elif hosts is not None and got != hosts:
                lacking.append(f"cluster {name}: hosts {sorted(got or ())} != {sorted(hosts)}")
        for name, timeout in self.routes.items() if routes is not None else ():
            present = routes is not None and name in routes
            got_timeout = routes.get(name) if routes is not None else None
            if timeout is None and present:
                lacking.append(f"route {name} still present")
            elif timeout is not None and (not present or got_timeout != timeout):
                lacking.append(f"route {name}: timeout {got_timeout} != {timeout}")
        return lacking


def _differs(before: Mapping[str, object], key: str, value: object) -> bool:
    return key not in before or before[key] != value


def _pools(cfg: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {p["name"]: p for p in cfg["pools"]}


def want_of(cfg: Mapping[str, Any], previous: Mapping[str, Any]) -> Want:
    """What every Envoy shows once ``cfg`` (a config document) has replaced ``previous``:
    each pool a cluster holding its replicas, each (pool, model) a route with the pool's
    ``max_request_seconds``; pools and models only ``previous`` had are gone."""
    pools, before = _pools(cfg), _pools(previous)
    clusters: dict[str, frozenset[str] | None] = {CLUSTER_PREFIX + n: None for n in before}
    routes: dict[str, float | None] = {
        f"{n}/{m}": None for n, p in before.items() for m in p["models"]
    }
    for name, pool in pools.items():
        clusters[CLUSTER_PREFIX + name] = frozenset(pool.get("replicas", []))
        for model in pool["models"]:
            routes[f"{name}/{model}"] = float(pool.get("max_request_seconds", 600.0))
    return Want(clusters, routes)


def changed(base: Mapping[str, Any], spare: Sequence[str]) -> dict[str, Doc]:
    """Per kind of change (but "remove pool", the way back from "add pool"), the baseline
    config with that change. ``spare`` are two running replicas in no pool: the first
    becomes the new pool's, the second joins pool ``a``."""
    out: dict[str, Doc] = {}
    for kind in KINDS:
        if kind == "remove pool":
            continue
        cfg: Doc = copy.deepcopy(dict(base))
        pools = {p["name"]: p for p in cfg["pools"]}
        if kind == "add pool":
            new = {**copy.deepcopy(pools["a"]), "name": "c", "models": ["model-c"]}
            cfg["pools"].append({**new, "replicas": [spare[0]]})
        elif kind == "route timeout":
            pools["a"]["max_request_seconds"] = 300.0
        elif kind == "move replica":
            pools["b"]["replicas"].append(pools["a"]["replicas"].pop())
        elif kind == "add replica":
            pools["a"]["replicas"].append(spare[1])
        elif kind == "add model alias":
            pools["a"]["models"].append("alias-a")
        out[kind] = cfg
    return out


def summary(times: Sequence[float]) -> tuple[float, float, float]:
    """p50, p90 and max of ``times`` (NaN for none)."""
    if not times:
        nan = float("nan")
        return nan, nan, nan
    return percentile(times, 50), percentile(times, 90), max(times)


@dataclass
class Sample:
    """One change: seconds from the rename to each Envoy showing it."""

    kind: str
    envoys: list[float | None]  # seconds from the rename to each Envoy showing it (None: never)

    @property
    def all(self) -> float | None:
        return None if None in self.envoys else max(t for t in self.envoys if t is not None)
