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
import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.lib import report
from bench.lib.source_tree import Tree, stop
from bench.lib.stats import fmt_ms
from bench.lib.util import RESULTS, ROOT, LogDir, free_port, say
from bench.scenarios.converge_plan import (
    JITTER,
    KINDS,
    NODES,
    POLL,
    PROBE_INTERVAL,
    STEP_TIMEOUT,
    Doc,
    Sample,
    Want,
    changed,
    cluster_hosts,
    route_timeouts,
    summary,
    want_of,
)
from bench.scenarios.converge_report import run_record, save

# ---------------------------------------------------------------- config writes, Envoy's admin


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
