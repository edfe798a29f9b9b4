"""Entry points of the benchmark's child processes: ``python -m bench.lib.serve KIND ...``.

  sims          N simulated replicas (warmroute.sim) that also time every request
  plane         warmroute's control plane, with cProfile on demand
  celery-front  the Celery contender's HTTP front end: enqueue, then ``result.get()``

Protocol (see ``bench.lib.child.Child``): the first stdout line is a JSON ready message; each
JSON command on stdin (``{"cmd": ...}``) gets one JSON reply line; EOF on stdin stops the
child cleanly. Everything else a child prints goes to stderr (the run's log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from aiohttp import web

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_proto: TextIO = sys.stdout


def _claim_stdout() -> None:
    """Keep the real stdout for protocol lines; anything else printed goes to stderr."""
    global _proto
    _proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)


def emit(message: dict[str, Any]) -> None:
    _proto.write(json.dumps(message) + "\n")
    _proto.flush()


async def serve_commands(handlers: dict[str, Handler]) -> None:
    """Answer commands from stdin until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        msg = json.loads(line)
        handler = handlers.get(msg.get("cmd", ""))
        try:
            reply = await handler(msg) if handler else {"error": f"unknown command {msg!r}"}
        except Exception as exc:  # the parent gets the error instead of a dead child
            logging.exception("command %r failed", msg)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        emit(reply)


# -- sims ----------------------------------------------------------------------------------


def _timed_sim_class() -> type:
    from warmroute.sim.replica import SimReplica

    class TimedSim(SimReplica):
        """A SimReplica that also notes, for each request that completed, when its handler
        started (the request reached the replica) and when its slot was released.

        Exact for one-slot replicas (nothing else can complete while a request holds the
        only slot), which is what the dispatch benchmark uses."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timings: list[tuple[float, float]] = []

        async def _inference(self, request: web.Request) -> web.StreamResponse:
            arrived = time.perf_counter()
            before = self._stats.completed
            try:
                return await super()._inference(request)
            finally:
                if self._stats.completed != before:
                    self.timings.append((arrived, time.perf_counter()))

        def reset(self) -> None:
            super().reset()
            self.timings = []

    return TimedSim


async def run_sims(args: argparse.Namespace) -> None:
    import dataclasses

    from warmroute.sim.service_time import ServiceTime

    cls = _timed_sim_class()
    sims = [
        cls(args.slots, 0.0, ServiceTime("fixed", 1.0), seed=i, model=args.model)
        for i in range(args.count)
    ]
    for sim in sims:
        await sim.start("127.0.0.1", 0)

    async def stats(_: dict[str, Any]) -> dict[str, Any]:
        return {"stats": [dataclasses.asdict(s.stats()) for s in sims]}

    async def reset(_: dict[str, Any]) -> dict[str, Any]:
        for s in sims:
            s.reset()
        return {"ok": True}

    async def timings(_: dict[str, Any]) -> dict[str, Any]:
        return {"timings": [s.timings for s in sims]}

    emit({"addresses": [s.address for s in sims]})
    try:
        await serve_commands({"stats": stats, "reset": reset, "timings": timings})
    finally:
        for sim in sims:
            await sim.stop()


# -- plane ---------------------------------------------------------------------------------


_IDLE = "<method 'poll' of 'select.epoll' objects>"  # the loop waiting: not a cost


def _bucket(path: str, func: str) -> str:
    """Which layer a profiled function belongs to."""
    if path == "~":
        if "_contextvars.Context" in func:
            # asyncio callbacks: grpc.aio's Cython core runs inside them, unseen by cProfile
            return "C code run as asyncio callbacks (grpc.aio Cython core)"
        return "other builtins (C)"
    for marker, name in (
        ("/warmroute/", "warmroute"),
        ("/grpc/", "grpc (Python parts)"),
        ("/asyncio/", "asyncio event loop"),
        ("/selectors.py", "asyncio event loop"),
        ("/google/protobuf/", "protobuf"),
        ("/prometheus_client/", "prometheus_client"),
        ("/aiohttp/", "aiohttp (admin, probes)"),
    ):
        if marker in path:
            return name
    return "other Python"


def profile_summary(profile: Any, count: int) -> dict[str, Any]:
    """Top ``count`` functions by own time, own time per layer, and time idle in epoll."""
    import pstats

    st = pstats.Stats(profile)
    rows, layers, idle = [], {}, 0.0
    for (path, line, func), (_cc, ncalls, tottime, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if func == _IDLE:
            idle += tottime
            continue
        layer = _bucket(path, func)
        layers[layer] = layers.get(layer, 0.0) + tottime
        where = func if path == "~" else f"{_short_path(path)}:{line}({func})"
        rows.append({"function": where, "ncalls": ncalls, "tottime": tottime, "cumtime": cumtime})
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return {
        "top": rows[:count],
        "layers": sorted(layers.items(), key=lambda kv: kv[1], reverse=True),
        "idle": idle,
        "total_tt": st.total_tt,  # type: ignore[attr-defined]
    }


def _short_path(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/warmroute/" in path:
        return path[path.rfind("/warmroute/") + 1 :]
    return "/".join(path.split("/")[-2:])


def _rss() -> int:
    """Resident memory of this process, bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _record_gc() -> list[tuple[int, float, float]]:
    """(generation, wall seconds, CPU seconds) of every garbage collection from now on:
    stop-the-world pauses of the event loop, a usual suspect for tail latency. Wall time
    minus CPU time is time the process was descheduled mid-collection."""
    import gc

    pauses: list[tuple[int, float, float]] = []
    started = [0.0, 0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter(), time.thread_time()]
        else:
            wall = time.perf_counter() - started[0]
            pauses.append((info["generation"], wall, time.thread_time() - started[1]))

    gc.callbacks.append(callback)
    return pauses


def _stamp_request_path(plane: Any, released: list[float], routed: list[float]) -> None:
    """Note when each access-log entry reaches the control plane and when each ext_proc
    answer is built, by wrapping two of warmroute's callables in this process (warmroute's
    code is unchanged): the access-log service's ``finish(entry)`` and the module function
    ``warmroute.request.responses.routed`` that builds every routed answer, both public.
    The wrappers pass any arguments through, so a changed signature does not matter; a
    renamed or unused callable is caught by the dispatch scenario's ``check_stamps`` (and
    its smoke run in tests/bench). ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, shared
    by every process, so these line up with the replicas' timestamps."""
    from warmroute.request import responses

    _wrap(plane.front_end.access_log, "finish", released, before=True)
    _wrap(responses, "routed", routed, before=False)


def _wrap(owner: Any, name: str, stamps: list[float], *, before: bool) -> None:
    """Replace ``owner.name`` by a wrapper appending ``perf_counter()`` to ``stamps``
    before or after each call."""
    import functools

    original = getattr(owner, name, None)
    if not callable(original):
        raise RuntimeError(
            f"--stamps: {owner!r} has no callable {name!r}; update bench/lib/serve.py"
        )

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if before:
            stamps.append(time.perf_counter())
            return original(*args, **kwargs)
        result = original(*args, **kwargs)
        stamps.append(time.perf_counter())
        return result

    setattr(owner, name, timed)


async def run_plane(args: argparse.Namespace) -> None:
    import cProfile
    from pathlib import Path

    from warmroute.config import Config
    from warmroute.server import ControlPlane

    text = await asyncio.to_thread(Path(args.config).read_text)
    cfg = Config.model_validate(json.loads(text))
    plane = ControlPlane(cfg)
    await plane.start()
    profile: list[cProfile.Profile] = []

    async def profile_start(_: dict[str, Any]) -> dict[str, Any]:
        prof = cProfile.Profile()
        profile[:] = [prof]
        prof.enable()  # this thread only: the event loop's, where the request path runs
        return {"ok": True}

    async def profile_stop(msg: dict[str, Any]) -> dict[str, Any]:
        prof = profile.pop()
        prof.disable()
        prof.dump_stats(msg["path"])
        return profile_summary(prof, int(msg.get("top", 10)))

    pauses = _record_gc()

    async def gc_pauses(msg: dict[str, Any]) -> dict[str, Any]:
        import gc

        out = {"pauses": list(pauses), "objects": len(gc.get_objects()), "rss": _rss()}
        if msg.get("clear"):
            pauses.clear()
        return out

    released: list[float] = []
    routed: list[float] = []
    if args.stamps:
        _stamp_request_path(plane, released, routed)

    async def stamps(_: dict[str, Any]) -> dict[str, Any]:
        return {"released": released, "routed": routed}

    emit({"grpc": cfg.control.grpc, "admin": cfg.control.admin, "pid": os.getpid()})
    try:
        await serve_commands(
            {
                "profile_start": profile_start,
                "profile_stop": profile_stop,
                "stamps": stamps,
                "gc": gc_pauses,
            }
        )
    finally:
        await plane.stop()


# -- celery front end ----------------------------------------------------------------------


async def run_celery_front(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from bench.lib.contenders import celery_app

    loop = asyncio.get_running_loop()
    # result.get() blocks: run it in threads, as an async web app must. The default executor
    # has min(32, cpus + 4) threads, which would cap requests in flight; size it for the load.
    pool = ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="result-get")

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        ms = float(request.headers.get("x-sim-service-ms", "0"))
        result = celery_app.infer.apply_async(args=[ms])
        try:
            out = await loop.run_in_executor(pool, partial(result.get, timeout=args.timeout))
        except Exception as exc:
            logging.warning("task %s failed: %r", result.id, exc)
            return web.json_response({"error": repr(exc)}, status=502)
        return web.json_response(out, status=int(out["status"]))

    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    emit({"port": args.port})
    try:
        await serve_commands({})
    finally:
        await runner.cleanup()
        pool.shutdown(wait=False, cancel_futures=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lib.serve")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("sims")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--model", default="sim-model")
    p = sub.add_parser("plane")
    p.add_argument("--config", required=True)
    p.add_argument("--stamps", action="store_true", help="time the request path (dispatch)")
    p = sub.add_parser("celery-front")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=512)
    p.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    _claim_stdout()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    run = {"sims": run_sims, "plane": run_plane, "celery-front": run_celery_front}[args.kind]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
