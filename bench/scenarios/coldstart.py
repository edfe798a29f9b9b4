"""Cold start: a burst at zero replicas, scaled at request time vs by a metric poller.

Each repetition starts a fresh control plane (in this process) and a real Envoy over ADS.
The pool runs simulated replicas as local processes (``simulate``: a cold start of
``load_seconds`` before the warm probe passes), none at first. Then ``burst`` requests
arrive at once.

* ``warmroute``: the pool has ``autoscale`` (min 0, max 4). The first request that has to
  wait pokes the autoscaler, which asks the ``LocalScaler`` for replicas at once.
* ``poll P s``: the same stack without ``autoscale``; a poller in this process does what
  KEDA's Prometheus scaler does: every P seconds it reads ``warmroute_requests_waiting``
  from the control plane's ``/metrics`` and sets ``ceil(waiting / slots)`` replicas (capped
  at max, never fewer than it already has) through the same ``LocalScaler``. P = 15 s (the
  HPA's sync period) and 30 s (KEDA's default ``pollingInterval``). Where the burst falls
  in the poll cycle decides the delay, so each repetition draws the poller's phase (first
  poll after the burst) with a fixed seed, stratified over [0, P).

Measured from the burst: the first call to ``LocalScaler.set_replicas`` with a positive
count (the scale decision, same instant for both), the first replica leasable, the first
and the last response; and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib import report
from bench.lib.child import output_to
from bench.lib.loadgen import Client, http_request
from bench.lib.stats import percentile
from bench.lib.util import MODEL, RESULTS, LogDir, free_port, free_ports, say

POOL = "main"
TARGET_DECISION_S = 1.0  # "queued demand issues a scale-up within 1 s"
QUICK_SCALE = 0.1  # --quick: poll periods, cold start and service time all x 0.1


@dataclass(frozen=True, slots=True)
class Timeline:
    poll_periods: tuple[float, ...]  # seconds
    load_seconds: float  # a replica's cold start (model load), after its process starts
    service_ms: float  # each request's service time
    burst: int = 8
    slots: int = 1
    max_replicas: int = 4
    repetitions: int = 6
    queue_timeout: float = 120.0
    scale: float = 1.0  # 1 = real values; QUICK_SCALE with --quick

    @property
    def contenders(self) -> list[tuple[str, float | None]]:
        return [("warmroute", None), *((f"poll {_s(p)} s", p) for p in self.poll_periods)]


def timeline(quick: bool, smoke: bool = False) -> Timeline:
    """Real KEDA/HPA periods by default; ``--quick`` scales the whole timeline down 10x
    (except process start-up, which is what it is); ``smoke`` also keeps one repetition,
    one poller, 4 requests on at most 2 replicas."""
    if smoke:
        return Timeline(
            poll_periods=(15.0 * QUICK_SCALE,),
            load_seconds=3.0 * QUICK_SCALE,
            service_ms=1000.0 * QUICK_SCALE,
            burst=4,
            max_replicas=2,
            repetitions=1,
            queue_timeout=30.0,
            scale=QUICK_SCALE,
        )
    scale = QUICK_SCALE if quick else 1.0
    return Timeline(
        poll_periods=(15.0 * scale, 30.0 * scale),
        load_seconds=3.0 * scale,
        service_ms=1000.0 * scale,
        scale=scale,
    )


def _s(seconds: float) -> str:
    return f"{seconds:g}"


# -- pure parts (tests/unit/test_bench_coldstart.py) ---------------------------------------


def poll_phases(period: float, n: int, seed: int) -> list[float]:
    """``n`` offsets of the first poll after the burst, in [0, period): one uniform draw in
    each of ``n`` equal strata (so few repetitions still cover the cycle), shuffled."""
    if n < 1 or period <= 0:
        raise ValueError(f"need n >= 1 and period > 0, got n={n}, period={period}")
    rng = random.Random(seed)
    phases = [(i + rng.random()) * period / n for i in range(n)]
    rng.shuffle(phases)
    return phases


def desired_replicas(waiting: float, slots: int, current: int, max_replicas: int) -> int:
    """The poller's decision: one replica per ``slots`` waiting requests, within max; it
    never scales down here (KEDA's cooldown is minutes, the measurement seconds)."""
    want = min(max_replicas, math.ceil(max(waiting, 0) / slots))
    return max(current, want)


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def gauge(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``, in a Prometheus text
    exposition; None if there is none."""
    found = None
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            found = (found or 0.0) + float(m.group(3))
    return found


@dataclass
class Rep:
    """One repetition of one contender; times in seconds after the burst."""

    contender: str
    phase: float | None  # poller: first poll after the burst
    decision: float | None  # first set_replicas(n > 0)
    warm: float | None  # first replica leasable (sampled every 5 ms)
    first: float | None  # first successful response
    last: float | None  # last response, any status
    errors: int
    replicas: int  # replicas running at the end
    scale_calls: list[tuple[float, int]] = field(default_factory=list)
    polls: list[tuple[float, float, int]] = field(default_factory=list)  # (t, waiting, set)


def median_and_worst(values: list[float | None]) -> tuple[float, float]:
    """Median and maximum, NaN if any repetition lacks the value (it never happened)."""
    if not values or any(v is None for v in values):
        return math.nan, math.nan
    got = [v for v in values if v is not None]
    return percentile(got, 50), max(got)


# -- running it ----------------------------------------------------------------------------


def plane_config(tl: Timeline, autoscale: bool) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "name": POOL,
        "models": [MODEL],
        "slots": tl.slots,
        "queue": {"max_waiting": 1000, "timeout_seconds": tl.queue_timeout},
        "probe": {"path": "/health", "interval_seconds": 0.05},
        "simulate": {
            "replicas": 0, "base_port": free_ports(tl.max_replicas),
            "load_seconds": tl.load_seconds, "distribution": "fixed", "median_ms": tl.service_ms,
        },
    }  # fmt: skip
    if autoscale:
        pool["autoscale"] = {
            "min_replicas": 0, "max_replicas": tl.max_replicas, "idle_seconds": 600,
        }  # fmt: skip
    return {
        "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "pools": [pool],
    }


async def run_rep(
    tl: Timeline, name: str, period: float | None, phase: float | None, logs: LogDir, tag: str
) -> Rep:
    from warmroute.config import Config
    from warmroute.envoy_process import EnvoyProcess
    from warmroute.server import ControlPlane
    from warmroute.state import Phase
    from warmroute.xds.bootstrap import ads_bootstrap, to_json

    cfg = Config.model_validate(plane_config(tl, autoscale=period is None))
    pool_cfg = cfg.pools[0]
    plane = ControlPlane(cfg)
    loop = asyncio.get_running_loop()
    t0 = math.inf
    scale_calls: list[tuple[float, int]] = []
    spawn = plane.local_scaler.set_replicas
    replicas_log = logs.file(f"{tag}-replicas")

    async def recorded(pool: Any, replicas: int) -> None:
        scale_calls.append((loop.time() - t0, replicas))
        with output_to(replicas_log):
            await spawn(pool, replicas)

    plane.local_scaler.set_replicas = recorded  # type: ignore[method-assign]
    polls: list[tuple[float, float, int]] = []
    deadline = tl.queue_timeout + 30.0

    async def poller(every: float, first: float) -> None:
        url = f"http://{cfg.control.admin}/metrics"
        async with aiohttp.ClientSession() as http:
            for k in range(int(deadline / every) + 2):
                await asyncio.sleep(max(0.0, t0 + first + k * every - loop.time()))
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    text = await resp.text()
                waiting = gauge(text, "warmroute_requests_waiting", pool=POOL) or 0.0
                current = await plane.local_scaler.get_replicas(pool_cfg)
                want = desired_replicas(waiting, tl.slots, current, tl.max_replicas)
                polls.append((loop.time() - t0, waiting, want))
                if want != current:
                    await plane.local_scaler.set_replicas(pool_cfg, want)

    warm_at: list[float] = []

    async def watch_warm() -> None:
        pool = plane.registry.pools[POOL]
        for _ in range(int(deadline / 0.005)):
            if any(r.phase is Phase.WARM for r in pool.replicas.values()):
                warm_at.append(loop.time() - t0)
                return
            await asyncio.sleep(0.005)

    await plane.start()
    envoy = EnvoyProcess(
        to_json(ads_bootstrap(cfg, node_id="bench-envoy", variant="sotw")),
        cfg.envoy.admin,
        log_level="warning",
        log_path=str(logs.file(f"{tag}-envoy")),
    )
    client = Client("127.0.0.1", int(cfg.envoy.listen.rpartition(":")[2]))
    payload = http_request("127.0.0.1", tl.service_ms)
    helpers: list[asyncio.Task[None]] = []
    try:
        await envoy.start()
        assert await plane.local_scaler.get_replicas(pool_cfg) == 0

        async def one() -> tuple[float, int]:
            status = await client.request(payload, deadline)
            return loop.time() - t0, status

        t0 = loop.time()
        requests = [asyncio.create_task(one()) for _ in range(tl.burst)]
        helpers.append(asyncio.create_task(watch_warm()))
        if period is not None and phase is not None:
            helpers.append(asyncio.create_task(poller(period, phase)))
        done, pending = await asyncio.wait(requests, timeout=deadline + 5)
        for t in pending:
            t.cancel()
        results = [t.result() for t in done]
        replicas = await plane.local_scaler.get_replicas(pool_cfg)
    finally:
        for t in helpers:
            t.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        client.close()
        await envoy.stop()
        await plane.stop()
    ok = [t for t, status in results if 200 <= status < 300]
    ups = [t for t, n in scale_calls if n > 0]
    return Rep(
        contender=name,
        phase=phase,
        decision=ups[0] if ups else None,
        warm=warm_at[0] if warm_at else None,
        first=min(ok) if ok else None,
        last=max((t for t, _ in results), default=None) if not pending else None,
        errors=tl.burst - len(ok),
        replicas=replicas,
        scale_calls=scale_calls,
        polls=polls,
    )


async def run(args: argparse.Namespace) -> Path:
    tl = timeline(args.quick, getattr(args, "smoke", False))
    logs = LogDir("coldstart")
    say(
        f"coldstart: {', '.join(n for n, _ in tl.contenders)}; {tl.repetitions} repetitions "
        f"each; burst {tl.burst} at 0 replicas, cold start {_s(tl.load_seconds)} s; "
        f"logs {logs.path}"
    )
    reps: dict[str, list[Rep]] = {}
    for ci, (name, period) in enumerate(tl.contenders):
        phases: list[float | None] = (
            [None] * tl.repetitions
            if period is None
            else list(poll_phases(period, tl.repetitions, args.seed * 1000 + ci))
        )
        reps[name] = []
        for i, phase in enumerate(phases):
            tag = f"{name.replace(' ', '')}-{i}"
            rep = await run_rep(tl, name, period, phase, logs, tag)
            reps[name].append(rep)
            where = "" if phase is None else f"first poll at {phase:.2f} s; "
            say(
                f"{name} #{i + 1}: {where}scale decision {_t(rep.decision)}, first warm "
                f"{_t(rep.warm)}, first response {_t(rep.first)}, last {_t(rep.last)}, "
                f"{rep.errors} errors, {rep.replicas} replicas"
            )
    return write_report(tl, reps, args.seed, args.out or RESULTS)


def _t(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f} s"


def _first_poll(rep: Rep) -> str:
    if rep.phase is None:
        return "—"
    if not rep.polls:
        return f"{rep.phase:.2f}"
    return f"{rep.phase:.2f} ({rep.polls[0][1]:g} waiting)"


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def write_report(tl: Timeline, reps: dict[str, list[Rep]], seed: int, out_dir: Path) -> Path:
    lines = report.header("Cold start: a burst at zero replicas", seed)
    quick = tl.scale != 1.0
    lines += [
        f"A burst of {tl.burst} requests at t = 0 on a pool with **0 replicas** (max "
        f"{tl.max_replicas}, {tl.slots} slot each). A replica is a `warmroute.sim` process "
        f"started by the `LocalScaler`, warm {_s(tl.load_seconds)} s after it starts "
        f"(`simulate.load_seconds`; process start-up comes on top); warm probe every 50 ms; "
        f"each request takes {_s(tl.service_ms)} ms. Control plane in the benchmark process, "
        f"real Envoy over ADS, queue timeout {_s(tl.queue_timeout)} s; a fresh stack per "
        f"repetition, {tl.repetitions} repetitions per contender.",
        "",
    ]
    if quick:
        lines += [
            f"**`--quick`: the timeline is scaled by {tl.scale:g}**: poll periods "
            f"{' and '.join(_s(p) for p in tl.poll_periods)} s stand for 15 and 30 s, the cold "
            f"start {_s(tl.load_seconds)} s for 3 s, service {_s(tl.service_ms)} ms for 1 s. "
            "Process start-up (Python imports; see *decision → first warm* below) is not "
            "scaled, so it weighs 10x more than in the default run.",
            "",
        ]
    lines += [
        "| contender | how it scales |",
        "| --- | --- |",
        "| warmroute | pool `autoscale: {min_replicas: 0, max_replicas: "
        f"{tl.max_replicas}}}`: the first request that waits wakes the autoscaler (push), "
        "one replica per uncovered waiter |",
        *(
            f"| poll {_s(p)} s | no `autoscale`; a poller reads `warmroute_requests_waiting` "
            f"from `/metrics` every {_s(p)} s (like KEDA's Prometheus scaler) and sets "
            f"`ceil(waiting / slots)` replicas, max {tl.max_replicas}; its phase is drawn per "
            "repetition |"
            for p in tl.poll_periods
        ),
        "",
        "Times are seconds after the burst; median and worst over the repetitions. "
        "*decision → first warm* is the same machinery for everyone: process start-up, "
        f"the {_s(tl.load_seconds)} s cold start, the next warm probe, Envoy's EDS ACK.",
        "",
    ]
    rows = []
    for name, rs in reps.items():
        d = median_and_worst([r.decision for r in rs])
        w = median_and_worst([r.warm for r in rs])
        dw = median_and_worst(
            [None if r.warm is None or r.decision is None else r.warm - r.decision for r in rs]
        )
        f = median_and_worst([r.first for r in rs])
        la = median_and_worst([r.last for r in rs])
        rows.append([
            name, len(rs), _cell(d[0], 3), _cell(d[1], 3), _cell(dw[0]), _cell(w[0]), _cell(f[0]),
            _cell(f[1]), _cell(la[0]), _cell(la[1]), sum(r.errors for r in rs),
        ])  # fmt: skip
    lines += [
        report.table(
            ["contender", "reps", "scale decision p50", "decision worst",
             "decision → first warm p50", "first warm p50",
             "first response p50", "first response worst", "last response p50",
             "last response worst", "errors"],
            rows,
        ),
        "",
        "## Target",
        "",
    ]  # fmt: skip
    wr = reps.get("warmroute", [])
    if wr:
        worst = median_and_worst([r.decision for r in wr])[1]
        verdict = "met" if worst <= TARGET_DECISION_S else "missed"
        lines.append(
            f"- warmroute: queued demand to scale-up decision, worst of {len(wr)}: "
            f"{worst * 1e3:.1f} ms (target ≤ {TARGET_DECISION_S:g} s): **{verdict}**"
        )
        base = median_and_worst([r.first for r in wr])[0]
        for name, rs in reps.items():
            if name == "warmroute":
                continue
            med, worst_first = median_and_worst([r.first for r in rs])
            lines.append(
                f"- {name}: first response {med - base:+.2f} s at the median and "
                f"{worst_first - base:+.2f} s at worst, compared with warmroute's median"
            )
    lines += [
        "",
        "A poller adds where the burst falls in its cycle: on average half a period, at worst "
        "a whole one, before any replica starts. The poller here is generous to KEDA/HPA: it "
        "reads the control plane directly (no Prometheus scrape interval on top), jumps "
        "straight to the needed count (KEDA activates 0 → 1 and leaves the rest to the HPA's "
        "next sync), and the new replicas need no scheduling or image pull.",
        "",
        "## Every repetition",
        "",
        report.table(
            ["contender", "#", "first poll", "scale calls (t s → replicas)", "first warm",
             "first response", "last response", "errors"],
            [
                [name, i + 1, _first_poll(r), ", ".join(f"{t:.3f}→{n}" for t, n in r.scale_calls)
                 or "—", _cell(r.warm), _cell(r.first), _cell(r.last), r.errors]
                for name, rs in reps.items()
                for i, r in enumerate(rs)
            ],
        ),
        "",
    ]  # fmt: skip
    png = out_dir / "coldstart.png"
    try:
        report.plot_cdfs(
            png,
            [
                ("first response", {n: [r.first for r in rs if r.first is not None]
                                    for n, rs in reps.items()}),
                ("last response", {n: [r.last for r in rs if r.last is not None]
                                   for n, rs in reps.items()}),
            ],
            xlabel="seconds after the burst",
            ylabel="fraction of repetitions",
            logx=False,
            totals={
                title: {n: len(rs) for n, rs in reps.items()}
                for title in ("first response", "last response")
            },
            suptitle="burst at zero replicas" + (f" (timeline x{tl.scale:g})" if quick else ""),
        )  # fmt: skip
        lines += [f"![cold start: first and last response]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("coldstart", lines, out_dir)
