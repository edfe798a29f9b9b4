"""warmroute: the control plane (a child process) and a real Envoy bootstrapped over ADS,
wired exactly as ``tests/e2e/stack.py`` and ``warmroute up`` wire them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from bench.lib.child import Child
from bench.lib.contenders.base import Contender
from bench.lib.util import MODEL, free_port
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.xds.bootstrap import ads_bootstrap, to_json


def plane_config(addresses: list[str], slots: int) -> dict[str, Any]:
    return {
        "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "pools": [
            {
                "name": "bench",
                "models": [MODEL],
                "slots": slots,
                "max_request_seconds": 600,
                "queue": {"max_waiting": 1_000_000, "timeout_seconds": 300},
                "probe": {"path": "/health", "interval_seconds": 0.5},
                "replicas": addresses,
            }
        ],
    }


class Warmroute(Contender):
    description = "warmroute: Envoy (ext_proc + access log, ADS) + control plane process"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.plane: Child | None = None
        self.envoy: EnvoyProcess | None = None
        self.admin = ""
        self.plane_args: list[str] = []  # extra `bench.lib.serve plane` flags, e.g. --stamps

    async def _start(self, addresses: list[str]) -> None:
        raw = plane_config(addresses, self.backends.slots)
        cfg = Config.model_validate(raw)
        path = self.logs.path / f"{self.name}-config.json"
        path.write_text(json.dumps(raw, indent=2))
        self.plane = Child(
            "plane", ["--config", str(path), *self.plane_args], self.logs.file(f"{self.name}-plane")
        )
        await self.plane.start_child()
        self.admin = cfg.control.admin
        self.port = int(cfg.envoy.listen.rpartition(":")[2])
        self.envoy = EnvoyProcess(
            to_json(ads_bootstrap(cfg, node_id="bench-envoy", variant="sotw")),
            cfg.envoy.admin,
            log_level="warning",
            log_path=str(self.logs.file(f"{self.name}-envoy")),
        )
        await self.envoy.start()

    async def _stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop()
        if self.plane is not None:
            await self.plane.stop()

    async def metrics(self) -> dict[str, float]:
        """The control plane's /metrics, samples summed over labels, by metric name."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{self.admin}/metrics") as resp,
        ):
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                key = name.split("{", 1)[0]
                out[key] = out.get(key, 0.0) + float(value)
        return out

    async def profile_start(self) -> None:
        assert self.plane is not None
        await self.plane.call("profile_start")

    async def profile_stop(self, path: str, top: int = 10) -> dict[str, Any]:
        assert self.plane is not None
        return await self.plane.call("profile_stop", path=path, top=top, timeout=120.0)

    async def stamps(self) -> tuple[list[float], list[float]]:
        """With ``--stamps``: when access-log entries arrived, when ext_proc answers left."""
        assert self.plane is not None
        reply = await self.plane.call("stamps")
        return reply["released"], reply["routed"]

    async def gc_pauses(self, clear: bool = False) -> list[tuple[int, float, float]]:
        """(generation, wall s, CPU s) of the control plane's garbage collections so far."""
        assert self.plane is not None
        reply = await self.plane.call("gc", clear=clear)
        return [(g, wall, cpu) for g, wall, cpu in reply["pauses"]]

    async def heap(self) -> tuple[int, int]:
        """Objects tracked by the control plane's garbage collector, and its RSS in bytes."""
        assert self.plane is not None
        reply = await self.plane.call("gc")
        return reply["objects"], reply["rss"]
