"""Queue dispatch: an aiohttp front end enqueues each request as a Celery task on a real
Redis broker and waits on ``result.get()``; one Celery worker per replica runs it.

Workers use the ``solo`` pool (the task runs in the worker process itself, concurrency 1):
the lowest-overhead way to run one task at a time, so the numbers are Celery's best case.
"""

from __future__ import annotations

import asyncio
import shutil
import sys

from bench.lib.child import Child, Process
from bench.lib.contenders.base import Contender
from bench.lib.util import child_env, free_port, say


class CeleryQueue(Contender):
    description = (
        "Celery 5 + Redis: aiohttp front end -> task queue -> 1 worker per replica "
        "(solo pool, acks_late, prefetch 1) -> replica; front end waits on result.get()"
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.redis: Process | None = None
        self.workers: list[Process] = []
        self.front: Child | None = None

    async def _start(self, addresses: list[str]) -> None:
        redis_port = free_port()
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("no redis-server on PATH: run `bash bench/setup.sh`")
        self.redis = Process(
            "redis",
            [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.logs.path)],
            self.logs.file(f"{self.name}-redis"),
        )  # fmt: skip
        await self.redis.start()
        env = child_env(
            BENCH_BROKER=f"redis://127.0.0.1:{redis_port}/0",
            BENCH_RESULTS=f"redis://127.0.0.1:{redis_port}/1",
        )
        await self._wait_redis(redis_port)
        for i, address in enumerate(addresses):
            worker = Process(
                f"worker{i}",
                [sys.executable, "-m", "celery", "-A", "bench.lib.contenders.celery_app", "worker",
                 "--pool", "solo", "--concurrency", "1", "--hostname", f"w{i}@bench",
                 "--queues", "bench", "--loglevel", "WARNING",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                self.logs.file(f"{self.name}-worker{i}"),
                env={**env, "BENCH_REPLICA": address},
            )  # fmt: skip
            await worker.start()
            self.workers.append(worker)
        self.port = free_port()
        self.front = Child(
            "celery-front", ["--port", str(self.port)], self.logs.file(f"{self.name}-front"), env
        )
        await self.front.start_child()
        await self._wait_workers(env["BENCH_BROKER"], env["BENCH_RESULTS"])

    async def _wait_redis(self, port: int, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                if loop.time() > deadline or self.redis is None or not self.redis.running:
                    tail = self.redis.tail() if self.redis else ""
                    raise RuntimeError(f"redis-server not up:\n{tail}") from None
                await asyncio.sleep(0.05)

    async def _wait_workers(self, broker: str, backend: str, timeout: float = 90.0) -> None:
        from celery import Celery

        app = Celery("bench-ping", broker=broker, backend=backend)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        want = len(self.workers)
        try:
            while True:
                replies = await asyncio.to_thread(app.control.ping, timeout=1.0)
                if len(replies) >= want:
                    break
                dead = [w.name for w in self.workers if not w.running]
                if dead or loop.time() > deadline:
                    raise RuntimeError(
                        f"celery: {len(replies)}/{want} workers answered; dead: {dead}\n"
                        + self.workers[0].tail()
                    )
        finally:
            app.close()
        say(f"{self.name}: {want} workers answer ping")

    async def _stop(self) -> None:
        if self.front is not None:
            await self.front.stop()
        await asyncio.gather(*(w.stop(timeout=10.0) for w in self.workers))
        if self.redis is not None:
            await self.redis.stop()
