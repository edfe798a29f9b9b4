"""SIGKILL of the control plane with every slot busy, restart 0.2 s later: any source tree.

    python bench/run.py restart --label before --warmroute-src /tmp/wr-before [--quick]
    python bench/run.py restart --label after  [--quick]     # this checkout

From the chosen tree and only through its CLI (``python -m warmroute serve``, ``bootstrap``,
``sim``): three one-slot simulated replicas, the control plane and one real Envoy. Each
round fills every slot with a long request, starts 8 clients sending short requests in a
loop, SIGKILLs ``warmroute serve`` and starts it again 0.2 s later, then keeps the clients
going until the long requests ended and a few more seconds passed. Per round, at the
replicas and at the clients: requests that reached a full replica (the sims' own
counter), time from the restart to the first request answered 200, and what clients got
meanwhile. Run with and without ``metrics:`` on the pool. Nothing here imports the
control plane, so the same script measures the old code and the new (DESIGN.md fact 11).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.lib import report
from bench.lib.source_tree import Tree, stop
from bench.lib.util import RESULTS, ROOT, LogDir, free_port, say
from warmroute.envoy_process import find_envoy

DATA = "restart.json"
MODEL = "restart-model"
VARIANTS = ("no metrics", "metrics")


async def _get(http: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return await r.text() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _sim_counter(http: aiohttp.ClientSession, address: str, name: str) -> float:
    text = await _get(http, f"http://{address}/metrics")
    if text is None:
        return float("nan")
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


async def _post(http: aiohttp.ClientSession, url: str, service_ms: int) -> int:
    headers = {"x-model": MODEL, "x-sim-service-ms": str(service_ms)}
    try:
        async with http.post(url, headers=headers, json={}) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def _until(check: Any, what: str, timeout: float = 60.0) -> None:
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"restart bench: timed out waiting for {what}")


async def one_round(
    tree: Tree, logs: LogDir, variant: str, long_ms: int, after_s: float
) -> dict[str, Any]:
    ports = [free_port() for _ in range(3)]
    replicas = [f"127.0.0.1:{p}" for p in ports]
    procs: list[subprocess.Popen[bytes]] = []
    serve: subprocess.Popen[bytes] | None = None
    try:
        for p in ports:
            procs.append(tree.start(
                tree.argv("sim", "--port", str(p), "--slots", "1", "--median-ms", "30",
                          "--model", MODEL, "--log-level", "WARNING"),
                logs.file(f"sim-{p}"),
            ))  # fmt: skip
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        pool: dict[str, Any] = {
            "name": "main", "models": [MODEL], "slots": 1,
            "queue": {"timeout_seconds": 30}, "probe": {"interval_seconds": 0.05},
            "replicas": replicas,
        }  # fmt: skip
        if variant == "metrics":
            pool["metrics"] = {"interval_seconds": 0.2}
        cfg = {
            "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
            "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": admin,
                        "expire_interval_seconds": 0.2},
            "pools": [pool],
        }  # fmt: skip
        path = tree.workdir / f"restart-{ports[0]}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        serve = tree.start(tree.argv("serve", "-c", str(path)), logs.file(f"serve-{ports[0]}"))
        boot = tree.workdir / f"bootstrap-{ports[0]}.json"
        boot.write_text(tree.run("bootstrap", "-c", str(path), "--format", "json"))
        procs.append(tree.start(
            [find_envoy(), "-c", str(boot), "--log-level", "warning", "--concurrency", "1",
             "--disable-hot-restart"],
            logs.file(f"envoy-{ports[0]}"),
        ))  # fmt: skip
        url = f"http://{listen}/v1/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:

            async def routes() -> bool:
                return await _post(http, url, 1) == 200

            await _until(routes, "a routed request")
            full_before = [
                await _sim_counter(http, r, "sim_requests_received_while_full_total")
                for r in replicas
            ]
            old = [asyncio.create_task(_post(http, url, long_ms)) for _ in replicas]

            async def busy() -> bool:
                running = [
                    await _sim_counter(http, r, "vllm:num_requests_running") for r in replicas
                ]
                return all(n == 1 for n in running)

            await _until(busy, "every slot busy")
            serve.send_signal(signal.SIGKILL)
            serve.wait()
            await asyncio.sleep(0.2)  # the fault: 0.2 s without a control plane
            restarted = time.monotonic()
            serve = tree.start(tree.argv("serve", "-c", str(path)), logs.file(f"serve-{ports[0]}"))
            answers: Counter[int] = Counter()
            before_first: Counter[int] = Counter()
            first_ok: list[float] = []
            stop_at = restarted + long_ms / 1000 + after_s

            async def client() -> None:
                while time.monotonic() < stop_at:
                    status = await _post(http, url, 30)
                    answers[status] += 1
                    if status == 200 and not first_ok:
                        first_ok.append(time.monotonic() - restarted)
                    if not first_ok:
                        before_first[status] += 1
                    if status != 200:
                        await asyncio.sleep(0.05)  # a refused client backs off

            await asyncio.gather(*(client() for _ in range(8)))
            old_statuses = await asyncio.gather(*old)
            full_after = [
                await _sim_counter(http, r, "sim_requests_received_while_full_total")
                for r in replicas
            ]
        return {
            "over_slots": int(sum(full_after) - sum(full_before)),
            "first_ok_s": first_ok[0] if first_ok else None,
            "answers": {str(k): v for k, v in sorted(answers.items())},
            "before_first": {str(k): v for k, v in sorted(before_first.items())},
            "old": old_statuses,
        }
    finally:
        stop([p for p in (serve, *procs) if p is not None])


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def write_report(data: Mapping[str, Any], out_dir: Path) -> Path:
    runs = data["runs"]
    labels = sorted(runs, key=lambda lb: (lb != "before", lb))
    lines = report.header("Restart under load: SIGKILL of the control plane with every slot busy")
    lines += [
        "Three one-slot simulated replicas, one real Envoy, `warmroute serve` from the "
        "labelled source tree (only its CLI). Per round: a long request fills every slot, 8 "
        "clients send 30 ms requests in a loop, the control plane is SIGKILLed and started "
        "again 0.2 s later; the clients go on until the long requests ended plus a few "
        "seconds. `over slots` is what the replicas themselves counted arriving while full "
        '(each answered 503 "replica full"); `first 200` is from the restart to the first '
        "client answer 200; `refused before` is every non-200 answer before it (control "
        "plane down or starting).",
        "",
        "Each label is one source tree, e.g. `git worktree add /tmp/wr-before addb83c` then "
        "`python bench/run.py restart --label before --warmroute-src /tmp/wr-before`.",
        "",
    ]
    rows = []
    for lb in labels:
        run = runs[lb]
        for variant in VARIANTS:
            rounds = [r for r in run["rounds"] if r["variant"] == variant]
            if not rounds:
                continue
            firsts = [r["first_ok_s"] for r in rounds if r["first_ok_s"] is not None]
            med = _median(firsts)
            rows.append([
                lb, run["commit"], variant, len(rounds),
                sum(r["over_slots"] for r in rounds),
                f"{med:.2f}" if med is not None else "never",
                f"{max(firsts):.2f}" if firsts else "never",
                sum(sum(v for k, v in r["before_first"].items() if k != "200") for r in rounds),
                sum(r["answers"].get("200", 0) for r in rounds),
                f"{run['long_ms'] / 1000:g}",
            ])  # fmt: skip
    lines.append(report.table(
        ["label", "commit", "variant", "rounds", "over slots", "first 200 s (median)",
         "first 200 s (max)", "refused before", "200s in all", "long request s"],
        rows,
    ))  # fmt: skip
    lines += ["", "## Every round", ""]
    for lb in labels:
        for r in runs[lb]["rounds"]:
            lines.append(
                f"- {lb} / {r['variant']}: {json.dumps({k: r[k] for k in r if k != 'variant'})}"
            )
    lines += ["", f"Commands: {'; '.join(runs[lb]['command'] for lb in labels)}"]
    return report.write("restart", lines, out_dir)


async def run(args: argparse.Namespace) -> Path:
    tree_src: Path = getattr(args, "warmroute_src", None) or ROOT
    label: str = getattr(args, "label", None) or "after"
    smoke = getattr(args, "smoke", False)
    reps: int = getattr(args, "reps", None) or (1 if smoke else 3 if args.quick else 5)
    long_ms = 2500 if smoke else 6000
    after_s = 1.0 if smoke else 3.0
    variants = ("no metrics",) if smoke else VARIANTS
    logs = LogDir("restart")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="warmroute-restart-") as work:
        tree = Tree(tree_src, Path(work))
        where = tree.check()
        commit = tree.commit()
        say(f"restart [{label}]: warmroute from {where} ({commit}); {reps} rounds per variant; "
            f"logs {logs.path}")  # fmt: skip
        for variant in variants:
            for rep in range(reps):
                r = await one_round(tree, logs, variant, long_ms, after_s)
                r["variant"] = variant
                rounds.append(r)
                say(f"  {variant} round {rep + 1}/{reps}: over slots {r['over_slots']}, "
                    f"first 200 {r['first_ok_s']}s, answers {r['answers']}")  # fmt: skip
    run = {
        "src": str(tree_src),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "long_ms": long_ms,
        "load": round(os.getloadavg()[0], 2),
        "command": report.command_line(),
        "rounds": rounds,
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
