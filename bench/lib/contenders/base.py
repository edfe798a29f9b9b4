"""What every contender shares: its simulated replicas, start/stop, and a warm-up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bench.lib.child import Child
from bench.lib.loadgen import Client, http_request
from bench.lib.util import LogDir, say


@dataclass(frozen=True, slots=True)
class Backends:
    """The simulated replicas behind a contender."""

    replicas: int
    slots: int
    procs: int = 1  # child processes hosting them (split for high request rates)


class Sims:
    """``backends.replicas`` simulated replicas in ``backends.procs`` child processes."""

    def __init__(self, backends: Backends, logs: LogDir, tag: str) -> None:
        procs = max(1, min(backends.procs, backends.replicas))
        n, extra = divmod(backends.replicas, procs)
        slots = ["--slots", str(backends.slots)]
        self.children = [
            Child("sims", ["--count", str(n + (i < extra)), *slots], logs.file(f"{tag}-sims{i}"))
            for i in range(procs)
        ]
        self.addresses: list[str] = []

    async def start(self) -> list[str]:
        for child in self.children:
            ready = await child.start_child()
            self.addresses += ready["addresses"]
        return self.addresses

    async def _all(self, cmd: str, key: str) -> list[Any]:
        out: list[Any] = []
        for child in self.children:
            out += (await child.call(cmd))[key]
        return out

    async def stats(self) -> list[dict[str, Any]]:
        """Each replica's counters (``warmroute.sim.replica.SimStats`` as a dict)."""
        return await self._all("stats", "stats")

    async def timings(self) -> list[list[tuple[float, float]]]:
        """Per replica: (arrived, slot released) of each completed request, perf_counter."""
        return await self._all("timings", "timings")

    async def reset(self) -> None:
        for child in self.children:
            await child.call("reset")

    async def stop(self) -> None:
        for child in self.children:
            await child.stop()


class Contender:
    """Base class: subclasses implement ``_start(addresses)`` and ``_stop()`` and set
    ``port``, where clients send requests (HTTP/1.1 on 127.0.0.1)."""

    description = ""

    def __init__(self, name: str, backends: Backends, logs: LogDir) -> None:
        self.name, self.backends, self.logs = name, backends, logs
        self.sims = Sims(backends, logs, name)
        self.port = 0

    async def _start(self, addresses: list[str]) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Contender:
        b = self.backends
        say(f"{self.name}: starting ({b.replicas} replicas x {b.slots} slots)")
        try:
            addresses = await self.sims.start()
            await self._start(addresses)
            await self.warm_up()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._stop()
        finally:
            await self.sims.stop()

    async def warm_up(self, timeout: float = 90.0) -> None:
        """Send zero-time requests one at a time until 2 per replica in a row succeed (so
        every part is up and connections exist), then zero the replicas' counters."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        client = Client("127.0.0.1", self.port)
        payload = http_request("127.0.0.1", 0.0)
        streak, sent = 0, 0
        try:
            while streak < 2 * self.backends.replicas:
                if loop.time() > deadline:
                    raise TimeoutError(f"{self.name}: not serving after {timeout}s ({sent} tries)")
                sent += 1
                status = await client.request(payload, timeout=10.0)
                streak = streak + 1 if status == 200 else 0
                if status != 200:
                    await asyncio.sleep(0.1)
        finally:
            client.close()
        await self.sims.reset()
        say(f"{self.name}: ready on 127.0.0.1:{self.port} ({sent} warm-up requests)")
