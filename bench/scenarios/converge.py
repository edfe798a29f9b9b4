"""Config write → every Envoy has it: per kind of change, any warmroute source tree (issue 13).

    python bench/run.py converge --label before --warmroute-src /tmp/wr-before [--quick]
    python bench/run.py converge --label after  [--quick]     # this checkout

Starts, from the chosen source tree and only through its CLI (``python -m warmroute serve``,
``bootstrap``, ``sim``), a control plane with a staged rollout (one named canary) and two
real Envoys on delta ADS, then, for each kind of change, rewrites the config file the way a
ConfigMap symlink swap or an editor does (write a temp file, rename it over) and polls both
Envoys' admin (``/clusters``, ``/config_dump?resource=dynamic_route_configs``) every ~5 ms
until both show the new state. t0 is taken just before the rename. Nothing here imports
the control plane, so the same script measures the old code and the new.

Each source tree's run is kept in ``bench/results/converge.json`` under its label; the page
and the bar chart show every label side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.lib import report
from bench.lib.stats import fmt_ms, percentile
from bench.lib.util import RESULTS, ROOT, LogDir, free_port, say

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


# ---------------------------------------------------------------- processes


@dataclass
class Tree:
    """A warmroute source tree whose CLI runs every child (control plane, bootstrap, sims)."""

    src: Path
    workdir: Path  # children's cwd: nothing importable, so PYTHONPATH decides

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.src), env.get("PYTHONPATH")) if p)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "warmroute", *args]

    def run(self, *args: str) -> str:
        return subprocess.run(
            self.argv(*args), cwd=self.workdir, env=self.env(), check=True,
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                argv, cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    def check(self) -> str:
        """Where ``warmroute`` is imported from by the children; must be inside ``src``."""
        where = subprocess.run(
            [sys.executable, "-c", "import warmroute; print(warmroute.__file__)"],
            cwd=self.workdir, env=self.env(), check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not Path(where).resolve().is_relative_to(self.src.resolve()):
            raise RuntimeError(f"children import warmroute from {where}, not from {self.src}")
        return where

    def commit(self) -> str:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(self.src), *args], capture_output=True, text=True, check=False
            ).stdout.strip()

        head = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "warmroute")
        return head + (" + uncommitted changes under warmroute/" if dirty else "")


def stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each (by its own pid), then SIGKILL whatever is left after 5 s."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


def write_atomically(path: Path, doc: Doc) -> float:
    """Write ``doc`` as YAML to a temp file beside ``path`` and rename it over ``path``;
    returns the perf_counter taken just before the rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    t0 = time.perf_counter()
    os.replace(tmp, path)
    return t0


async def _get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        r.raise_for_status()
        return await r.json(content_type=None)


async def envoy_unmet(http: aiohttp.ClientSession, admin: str, want: Want) -> list[str]:
    """What Envoy at ``admin`` does not show yet of ``want`` (fetches only what it needs)."""
    clusters = routes = None
    if want.clusters:
        clusters = cluster_hosts(await _get_json(http, f"http://{admin}/clusters?format=json"))
    if want.routes:
        dump = await _get_json(http, f"http://{admin}/config_dump?resource=dynamic_route_configs")
        routes = route_timeouts(dump)
    return want.unmet(clusters, routes)


async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    return False


async def until(check: Callable[[], Any], what: str, timeout: float = STEP_TIMEOUT) -> None:
    """Await ``check()`` every 20 ms until it is true; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- one stack, one soak setting


@dataclass
class Sample:
    kind: str
    envoys: list[float | None]  # seconds from the rename to each Envoy showing it (None: never)

    @property
    def all(self) -> float | None:
        return None if None in self.envoys else max(t for t in self.envoys if t is not None)


@dataclass
class Stack:
    tree: Tree
    logs: LogDir
    soak: float
    replicas: list[str]  # addresses of running simulated replicas
    config_path: Path = field(init=False)
    control_admin: str = ""
    envoy_admins: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    jitter: float = JITTER

    def base(self) -> Doc:
        probe = {"path": "/health", "interval_seconds": PROBE_INTERVAL}
        r = self.replicas
        return {
            "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
            "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": self.control_admin},
            "xds": {
                "variant": "delta",
                "rollout": {"canary_nodes": [NODES[0]], "soak_seconds": self.soak},
            },
            "pools": [
                {"name": "a", "models": ["model-a"], "probe": probe, "replicas": r[0:2]},
                {"name": "b", "models": ["model-b"], "probe": probe, "replicas": r[2:4]},
            ],
        }

    async def start(self, http: aiohttp.ClientSession) -> Doc:
        self.control_admin = f"127.0.0.1:{free_port()}"
        # Alone in its directory, which the new code watches: only config writes land there.
        folder = tempfile.mkdtemp(dir=self.tree.workdir, prefix=f"config-soak{self.soak:g}-")
        self.config_path = Path(folder, "warmroute.yaml")
        base = self.base()
        write_atomically(self.config_path, base)
        tag = f"soak{self.soak:g}"
        self.procs.append(
            self.tree.start(
                self.tree.argv("serve", "-c", str(self.config_path)),
                self.logs.file(f"warmroute-{tag}"),
            )
        )
        await until(lambda: _ok(http, f"http://{self.control_admin}/healthz"), "control plane")
        # Found as warmroute finds it (PATH, else beside this Python); only this process's
        # tree is asked, the children still run the measured tree.
        from warmroute.envoy_process import find_envoy

        envoy = find_envoy()
        for node in NODES:
            boot = json.loads(
                self.tree.run("bootstrap", "-c", str(self.config_path), "--node-id", node,
                              "--variant", "delta", "--format", "json")
            )  # fmt: skip
            port = free_port()
            boot["admin"]["address"]["socketAddress"]["portValue"] = port
            path = Path(self.tree.workdir, f"envoy-{node}-{tag}.json")
            await asyncio.to_thread(path.write_text, json.dumps(boot))
            self.procs.append(
                self.tree.start(
                    [envoy, "-c", str(path), "--log-level", "warning", "--concurrency", "1",
                     "--disable-hot-restart"],
                    self.logs.file(f"envoy-{node}-{tag}"),
                )
            )  # fmt: skip
            self.envoy_admins.append(f"127.0.0.1:{port}")
        for admin in self.envoy_admins:

            async def ready(a: str = admin) -> bool:
                return await _ok(http, f"http://{a}/ready")

            await until(ready, f"Envoy {admin} ready")
        full = want_of(base, base)
        for admin in self.envoy_admins:

            async def shows(a: str = admin) -> bool:
                return not await envoy_unmet(http, a, full)

            await until(shows, f"Envoy {admin} to show the baseline config")
        await self.settled(http)
        return base

    async def settled(self, http: aiohttp.ClientSession) -> None:
        """Until the rollout is stable with every node connected (the admin's ``/xds``; a
        version without it is taken as settled once the Envoys show the change)."""

        async def stable() -> bool:
            try:
                status = await _get_json(http, f"http://{self.control_admin}/xds")
            except (aiohttp.ClientError, TimeoutError):
                return False
            if "stage" not in status:
                return True
            nodes = status.get("nodes", {})
            connected = all(n in nodes and nodes[n].get("connected", True) for n in NODES)
            return bool(status["stage"] == "stable" and connected)

        await until(stable, "the rollout to settle")

    async def change(self, http: aiohttp.ClientSession, kind: str, new: Doc, old: Doc) -> Sample:
        """After a random pause, write ``new`` over ``old``; time until each Envoy shows it."""
        want = want_of(new, old).minus(want_of(old, new))
        await asyncio.sleep(self.rng.uniform(0, self.jitter))
        times: list[float | None] = [None] * len(self.envoy_admins)
        t0 = write_atomically(self.config_path, new)
        lacking: list[str] = []
        while time.perf_counter() - t0 < STEP_TIMEOUT:
            pending = [i for i, t in enumerate(times) if t is None]
            if not pending:
                break
            results = await asyncio.gather(
                *(envoy_unmet(http, self.envoy_admins[i], want) for i in pending)
            )
            now = time.perf_counter()
            for i, unmet in zip(pending, results, strict=True):
                if not unmet:
                    times[i] = now - t0
                lacking = unmet or lacking
            await asyncio.sleep(POLL)
        if None in times:
            say(f"  {kind}: not on every Envoy after {STEP_TIMEOUT:g}s: {lacking[:3]}")
        await self.settled(http)
        return Sample(kind, times)

    def stop(self) -> None:
        stop(reversed(self.procs))


async def measure(
    tree: Tree, logs: LogDir, soak: float, reps: int, seed: int, jitter: float = JITTER
) -> list[Sample]:
    """Start sims, the control plane and two Envoys; ``reps`` rounds of every kind, each
    write after a random pause of up to ``jitter`` seconds."""
    ports = [free_port() for _ in range(6)]
    sims = [
        tree.start(tree.argv("sim", "--port", str(p), "--log-level", "WARNING"),
                   logs.file(f"sim-{p}"))
        for p in ports
    ]  # fmt: skip
    replicas = [f"127.0.0.1:{p}" for p in ports]
    stack = Stack(tree, logs, soak, replicas, rng=random.Random(seed), jitter=jitter)
    samples: list[Sample] = []
    try:
        async with aiohttp.ClientSession() as http:
            for r in replicas:

                async def up(r: str = r) -> bool:
                    return await _ok(http, f"http://{r}/health")

                await until(up, f"replica {r}")
            base = await stack.start(http)
            variants = changed(base, replicas[4:6])
            for rep in range(reps):
                for kind, variant in variants.items():
                    samples.append(await stack.change(http, kind, variant, base))
                    back = "remove pool" if kind == "add pool" else f"revert {kind}"
                    samples.append(await stack.change(http, back, base, variant))
                done = [s for s in samples if s.kind in KINDS]
                say(f"  soak {soak:g}s: round {rep + 1}/{reps}: "
                    + ", ".join(f"{k} {fmt_ms(summary(_alls(done, k))[0] * 1e3, 0)}"
                                for k in KINDS) + " ms p50")  # fmt: skip
    finally:
        stack.stop()
        stop(sims)
    return samples


def _alls(samples: Iterable[Sample], kind: str) -> list[float]:
    return [s.all for s in samples if s.kind == kind and s.all is not None]


# ---------------------------------------------------------------- results: every label, one page

DATA = "converge.json"


def run_record(samples: Sequence[Sample], soak: float) -> dict[str, Any]:
    """One soak setting's samples as stored: per kind, seconds to every Envoy and to the
    first, and how many changes never reached every Envoy."""
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(s.kind for s in samples):
        mine = [s for s in samples if s.kind == kind]
        out[kind] = {
            "all": [s.all for s in mine if s.all is not None],
            "first": [min(t for t in s.envoys if t is not None) for s in mine
                      if any(t is not None for t in s.envoys)],
            "timeouts": sum(s.all is None for s in mine),
        }  # fmt: skip
    return {"soak_seconds": soak, "kinds": out}


def _cell(times: Sequence[float]) -> str:
    p50, p90, top = (v * 1e3 for v in summary(times))
    return f"{fmt_ms(p50, 0)} / {fmt_ms(p90, 0)} / {fmt_ms(top, 0)}"


def write_report(data: Mapping[str, Any], out_dir: Path) -> Path:
    runs: Mapping[str, Any] = data["runs"]
    labels = sorted(runs, key=lambda lb: (lb != "before", lb))
    lines = report.header("Config write → every Envoy ACKed, per kind of change (issue 13)")
    lines += [
        "Control plane (`python -m warmroute serve -c FILE`, run from the source tree of each "
        "label), two real Envoys on delta ADS (node `converge-a` is the rollout's only "
        "canary, `converge-b` follows on promotion), six simulated replicas "
        "(`warmroute sim`, listed under `replicas:`; probe every "
        f"{PROBE_INTERVAL * 1e3:g} ms). Each change rewrites the config file atomically "
        "(temp file + rename, like a ConfigMap symlink swap); t0 is taken just before the "
        f"rename. Both Envoys' admin (`/clusters`, `/config_dump?resource="
        f"dynamic_route_configs`) are polled every ~{POLL * 1e3:g} ms until each shows the "
        "change: the new pool's cluster with its replica and its route; the route's new "
        "timeout; the moved replica HEALTHY in the other pool's cluster and gone from its "
        "old one; the added replica in the cluster; the alias's route; the removed pool's "
        'cluster and routes gone. Each change is then undone (timed too: "remove pool" is '
        'the undoing of "add pool"); the next waits for the rollout to be stable '
        f"(control admin `/xds`), then a random 0-{JITTER:g} s, so writes do not fall in step "
        "with the control plane's timers. Kinds are interleaved round by round.",
        "",
        "Cells are **p50 / p90 / max ms** from the rename to *every* Envoy showing the change; "
        "the first Envoy (the canary, for a staged config change) alone is its own column; "
        "raw seconds per change are in `converge.json`. Endpoint-only kinds (no cluster, route "
        f"or listener change): {', '.join(ENDPOINT_ONLY)}.",
        "",
        "**Noise:** 2 CPUs shared with other engineers' builds and tests while this ran; "
        "read differences of a few tens of ms as noise, differences of a second as real.",
        "",
        "## Runs",
        "",
        "Each label is one source tree, e.g. `git worktree add /tmp/wr-before eefb576` then "
        "`python bench/run.py converge --label before --warmroute-src /tmp/wr-before`; a run "
        "replaces only its own label's results in `converge.json`.",
        "",
        report.table(
            ["label", "source tree", "commit", "date", "rounds", "load avg at end", "command"],
            [
                [
                    lb,
                    f"`{runs[lb]['src']}`",
                    runs[lb]["commit"],
                    runs[lb]["date"],
                    runs[lb]["reps"],
                    runs[lb].get("load", "—"),
                    f"`{runs[lb]['command']}`",
                ]
                for lb in labels
            ],
        ),
        "",
    ]
    soaks = sorted({r["soak_seconds"] for lb in labels for r in runs[lb]["results"]}, reverse=True)
    for soak in soaks:
        lines += [f"## Soak {soak:g} s", ""]
        rows = []
        for kind in KINDS:
            row: list[object] = [kind + (" (endpoint-only)" if kind in ENDPOINT_ONLY else "")]
            for lb in labels:
                rec = next((r for r in runs[lb]["results"] if r["soak_seconds"] == soak), None)
                got = rec["kinds"].get(kind) if rec else None
                if got is None:
                    row += ["—", "—"]
                    continue
                lost = f" ({got['timeouts']} never)" if got["timeouts"] else ""
                row += [_cell(got["all"]) + lost, fmt_ms(summary(got["first"])[0] * 1e3, 0)]
            rows.append(row)
        heads = [(f"{lb}: every Envoy, p50 / p90 / max ms", f"{lb}: first Envoy, p50 ms")
                 for lb in labels]  # fmt: skip
        lines += [report.table(["kind", *(h for pair in heads for h in pair)], rows)]
        lines.append("")
    png = out_dir / "converge.png"
    try:
        plot(png, runs, labels, soaks)
        lines += [f"![config write to every Envoy, per kind]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("converge", lines, out_dir)


def plot(png: Path, runs: Mapping[str, Any], labels: Sequence[str], soaks: Sequence[float]) -> None:
    """One panel per soak setting: per kind, a bar per label at p50, whiskers to p90, a dot
    at the max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(soaks), figsize=(7.5 * len(soaks), 4.6), squeeze=False)
    width = 0.8 / max(1, len(labels))
    for ax, soak in zip(axes.flat, soaks, strict=True):
        for j, lb in enumerate(labels):
            rec = next((r for r in runs[lb]["results"] if r["soak_seconds"] == soak), None)
            xs, p50s, errs, tops = [], [], [], []
            for i, kind in enumerate(KINDS):
                got = rec["kinds"].get(kind) if rec else None
                if not got or not got["all"]:
                    continue
                p50, p90, top = (v * 1e3 for v in summary(got["all"]))
                xs.append(i - 0.4 + width * (j + 0.5))
                p50s.append(p50)
                errs.append(p90 - p50)
                tops.append(top)
            bars = ax.bar(xs, p50s, width, yerr=[[0] * len(errs), errs], capsize=3, label=lb)
            ax.plot(xs, tops, "o", color=bars.patches[0].get_facecolor() if bars.patches
                    else None, markersize=4)  # fmt: skip
        ax.set_xticks(range(len(KINDS)))
        ax.set_xticklabels([k.replace(" ", "\n", 1) for k in KINDS], fontsize=8)
        ax.set_ylabel("ms, config rename → every Envoy shows it")
        ax.set_title(f"soak {soak:g} s (bar p50, whisker p90, dot max)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


async def run(args: argparse.Namespace) -> Path:
    tree_src: Path = getattr(args, "warmroute_src", None) or ROOT
    label: str = getattr(args, "label", None) or "after"
    smoke = getattr(args, "smoke", False)
    reps: int = getattr(args, "reps", None) or (1 if smoke else 3 if args.quick else 10)
    soaks: Sequence[float] = getattr(args, "soaks", None) or ((0.0,) if smoke else (1.0, 0.0))
    logs = LogDir("converge")
    with tempfile.TemporaryDirectory(prefix="warmroute-converge-") as work:
        tree = Tree(tree_src, Path(work))
        where = tree.check()
        commit = tree.commit()
        say(f"converge [{label}]: warmroute from {where} ({commit}); {reps} rounds per soak "
            f"{', '.join(f'{s:g}s' for s in soaks)}; logs {logs.path}")  # fmt: skip
        results = []
        for soak in soaks:
            samples = await measure(
                tree, logs, soak, reps, getattr(args, "seed", 1), 0.1 if smoke else JITTER
            )
            results.append(run_record(samples, soak))
    run = {
        "src": str(tree.src),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "reps": reps,
        "load": round(os.getloadavg()[0], 2),
        "command": report.command_line(),
        "results": results,
    }
    return save(args.out or RESULTS, label, run)


def save(out_dir: Path, label: str, run: Mapping[str, Any]) -> Path:
    """Store this run under ``label`` beside the others' and rewrite the page."""
    path = out_dir / DATA
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    data["runs"][label] = run
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return write_report(data, out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--warmroute-src", type=lambda s: Path(s).absolute(), default=None,
        help="converge, restart: the source tree whose CLI runs the control plane "
             "(default: this one)",
    )  # fmt: skip
    parser.add_argument(
        "--label",
        default=None,
        help="converge, restart: this run's name in the results (default after)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="converge: rounds per kind (default 10, quick 3); restart: rounds per variant "
        "(default 5, quick 3)",
    )
    parser.add_argument(
        "--soaks", type=lambda s: [float(v) for v in s.split(",") if v], default=None,
        help="converge: comma list of rollout soak seconds (default 1,0)",
    )  # fmt: skip
