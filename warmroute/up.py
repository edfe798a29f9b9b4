"""``warmroute up``: simulated replicas + the control plane + a real Envoy on one machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from warmroute import view
from warmroute.config import Config, PoolConfig
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim import process
from warmroute.xds.bootstrap import ads_bootstrap, to_json

logger = logging.getLogger(__name__)


async def _start_simulated(pool: PoolConfig) -> list[asyncio.subprocess.Process]:
    return [
        await process.spawn(pool, i, pool.replica_slots(replica))
        for i, replica in enumerate(pool.simulated_replicas())
    ]


async def _report_exit(proc: asyncio.subprocess.Process) -> None:
    code = await proc.wait()
    logger.error("simulated replica (pid %d) exited with status %d", proc.pid, code)


async def _stop_processes(procs: list[asyncio.subprocess.Process]) -> None:
    await asyncio.gather(*(process.stop(p) for p in procs))


async def run(
    cfg: Config,
    *,
    config_path: str | None = None,
    live: bool = True,
    duration: float | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or ``duration`` seconds); always stops every child.

    SIGHUP (or editing ``config_path``) reloads the config; Envoy gets it over ADS.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    plane = ControlPlane(cfg, config_path=config_path)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(plane.reload_from_file()))
    sims: list[asyncio.subprocess.Process] = []
    watchers: list[asyncio.Task[None]] = []  # log a simulated replica that dies early
    envoy = EnvoyProcess(
        to_json(ads_bootstrap(cfg)),
        cfg.envoy.admin,
        binary=cfg.envoy.binary,
        log_level=cfg.envoy.log_level,
        concurrency=cfg.envoy.concurrency,
    )
    try:
        for pool in cfg.pools:
            sims += await _start_simulated(pool)
        watchers += [asyncio.create_task(_report_exit(p)) for p in sims]
        await plane.start()
        await envoy.start()
        model = cfg.pools[0].models[0]
        header = cfg.routing.model_header
        banner = (
            f"warmroute is up. Send requests to http://{cfg.envoy.listen}, e.g.\n"
            f"  curl -s -H '{header}: {model}' http://{cfg.envoy.listen}/v1/completions -d '{{}}'\n"
            f"metrics: http://{cfg.control.admin}/metrics  state: http://{cfg.control.admin}/state"
            f"  envoy admin: http://{cfg.envoy.admin}\nCtrl-C stops everything.\n"
        )
        print(banner, flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await _show(plane, stop, live, banner)
        return 0
    finally:
        print("stopping...", flush=True)
        for w in watchers:
            w.cancel()
        await envoy.stop()
        await plane.stop()
        await _stop_processes(sims)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _show(plane: ControlPlane, stop: asyncio.Event, live: bool, banner: str) -> None:
    """Redraw the replica table each second on a terminal; every 5 s as plain lines if not."""
    tty = live and sys.stdout.isatty()
    interval = 1.0 if tty else 5.0
    while not stop.is_set():
        table = view.render(plane.registry.view().to_json())
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J" + banner + "\n" + table + "\n")
        elif live:
            sys.stdout.write(table + "\n\n")
        sys.stdout.flush()
        with contextlib.suppress(TimeoutError):  # asyncio.timeout: see Autoscaler.run
            async with asyncio.timeout(interval):
                await stop.wait()
