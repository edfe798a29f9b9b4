"""`warmroute up` and `warmroute status` as a user runs them: real processes, real Envoy."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.e2e.stack import UpFactory
from tests.helpers import free_port, free_ports, wait_for


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmroute", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_up_serves_requests_shows_status_and_stops_every_child(
    tmp_path: Path, up_factory: UpFactory
) -> None:
    listen, control_admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    base = free_ports(2)
    cfg: dict[str, Any] = {
        "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": control_admin},
        "xds": {"rollout": {"soak_seconds": 0}},
        "pools": [
            {
                "name": "demo",
                "models": ["sim-model"],
                "probe": {"interval_seconds": 0.1},
                "simulate": {
                    "replicas": 2,
                    "base_port": base,
                    "load_seconds": 0.5,
                    "distribution": "fixed",
                    "median_ms": 20,
                },
            }
        ],
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with (tmp_path / "up.log").open("wb") as log:
        proc = await up_factory(path, output=log, new_session=True)
        async with aiohttp.ClientSession() as http:

            async def two_warm() -> bool:
                try:
                    async with http.get(f"http://{control_admin}/state") as r:
                        state: dict[str, Any] = await r.json()
                except aiohttp.ClientError:
                    return False
                return bool(sum(x["phase"] == "warm" for x in state["pools"][0]["replicas"]) == 2)

            await wait_for(two_warm, timeout=30, interval=0.1, what="`up` with 2 warm replicas")

            async def served() -> bool:
                try:
                    async with http.post(
                        f"http://{listen}/v1/completions", headers={"x-model": "sim-model"}
                    ) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(served, timeout=15, interval=0.1, what="a request served via Envoy")
            for _ in range(5):
                assert await served()
            # An edited file is reloaded (on SIGHUP, or by the watcher within 1 s) and Envoy
            # gets the new route over ADS.
            cfg["pools"][0]["models"].append("renamed-model")
            path.write_text(yaml.safe_dump(cfg))
            proc.send_signal(signal.SIGHUP)

            async def new_model_served() -> bool:
                async with http.post(
                    f"http://{listen}/v1/completions", headers={"x-model": "renamed-model"}
                ) as r:
                    return r.status == 200

            await wait_for(new_model_served, timeout=15, interval=0.1, what="reloaded model")
        code, out = await _run("status", "--admin", control_admin)
        assert code == 0, out
        assert "pool demo" in out and "warm" in out
        code, out = await _run("status", "--admin", control_admin, "--json")
        assert json.loads(out)["pools"][0]["granted_immediately"] >= 7
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    # Every child (Envoy and the simulated replicas) is gone: their ports are free again.
    for port in (base, base + 1, int(listen.rsplit(":", 1)[1])):
        reader_writer = asyncio.open_connection("127.0.0.1", port)
        try:
            _, w = await reader_writer
        except OSError:
            continue
        w.close()
        raise AssertionError(f"port {port} still open after `warmroute up` stopped")


async def test_children_die_with_a_killed_up(tmp_path: Path, up_factory: UpFactory) -> None:
    control_admin, base = f"127.0.0.1:{free_port()}", free_ports(2)
    cfg = {
        "envoy": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": control_admin},
        "pools": [{"name": "demo", "models": ["m"], "probe": {"interval_seconds": 0.1},
                   "simulate": {"replicas": 2, "base_port": base, "load_seconds": 0}}],
    }  # fmt: skip
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = await up_factory(path)

    async def port_open(port: int) -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        w.close()
        return True

    await wait_for(lambda: port_open(base + 1), timeout=30, what="replicas up")
    proc.kill()  # SIGKILL: `up` runs no cleanup at all
    await proc.wait()
    # The parent-death signal still takes the replicas (and Envoy) down.
    await wait_for(
        lambda: _all_closed(port_open, (base, base + 1)), timeout=10, what="children gone"
    )


async def _all_closed(port_open: Any, ports: tuple[int, ...]) -> bool:
    for port in ports:
        if await port_open(port):
            return False
    return True
