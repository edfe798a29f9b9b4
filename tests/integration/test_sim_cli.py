"""``warmroute sim`` and the simulated replicas ``warmroute up`` spawns: real processes.

Synchronisation is a polled condition with a deadline (``wait_for``), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from tests.helpers import free_port, free_ports, wait_for
from warmroute import cli, config
from warmroute.sim import process

ROOT = Path(__file__).resolve().parents[2]

OPTIONS = [
    "--host", "--port", "--slots", "--load-seconds", "--distribution", "--median-ms",
    "--sigma", "--seed", "--model", "--models", "--ttft-ms", "--per-token-ms", "--log-level",
    "--fail-status",
]  # fmt: skip


async def _run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60.0)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize("command", [["-m", "warmroute", "sim"], ["-m", "warmroute.sim"]])
async def test_help_lists_every_option(command: list[str]) -> None:
    code, out, _ = await _run(*command, "--help")
    assert code == 0
    for option in OPTIONS:
        assert option in out, option
    assert "OpenAI" in out


async def test_bad_option_exits_2_naming_it() -> None:
    code, _, err = await _run("-m", "warmroute", "sim", "--slots", "0")
    assert code == 2 and "--slots" in err and "expected an integer >= 1" in err
    code, _, err = await _run("-m", "warmroute", "sim", "--port", "1", "--nonsense")
    assert code == 2 and "unrecognized arguments: --nonsense" in err
    code, _, err = await _run("-m", "warmroute", "sim", "--fail-status", "404")
    assert code == 2 and "--fail-status" in err and "expected an integer >= 500" in err
    code, _, err = await _run("-m", "warmroute.sim", "--fail-status", "600")
    assert code == 2 and "fail status must be in 500..599, got 600" in err


def test_the_example_model_pool_runs_warmroute_sim_with_valid_arguments() -> None:
    """deploy/base/model-pool.yaml's container runs ``warmroute sim ...`` (the image's
    entrypoint is ``warmroute``); its arguments must parse."""
    (deployment,) = yaml.safe_load_all((ROOT / "deploy/base/model-pool.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args(container["args"])
    assert (args.command, args.host, args.port, args.slots) == ("sim", "0.0.0.0", 8000, 1)
    assert (args.load_seconds, args.models) == (20.0, ["sim-model"])


async def _stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any] | None:
    """``/stats`` once the replica is warm, None until then (or while nothing listens)."""
    try:
        async with http.get(f"{base}/health") as health:
            if health.status != 200:
                return None
        async with http.get(f"{base}/stats") as resp:
            stats: dict[str, Any] = await resp.json()
            return stats
    except aiohttp.ClientConnectionError:
        return None


async def _wait_stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def warm() -> bool:
        stats = await _stats(http, base)
        if stats is not None:
            found.append(stats)
        return stats is not None

    await wait_for(warm, timeout=30.0, what=f"{base}/health 200")
    return found[-1]


async def test_warmroute_sim_serves_the_openai_api_until_sigterm() -> None:
    port = free_port()
    args = ["--port", str(port), "--slots", "3", "--load-seconds", "0.2"]
    args += ["--model", "alpha", "--model", "beta", "--ttft-ms", "1", "--per-token-ms", "1"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmroute", "sim", *args, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            stats = await _wait_stats(http, base)
        assert (stats["slots"], stats["warm"]) == (3, True)
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as client:
            assert [m.id async for m in client.models.list()] == ["alpha", "beta"]
            r = await client.chat.completions.create(model="beta", messages=[], max_tokens=2)
        assert (r.model, r.usage and r.usage.completion_tokens) == ("beta", 2)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10.0) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert f"127.0.0.1:{port} listening" in log and "warm after 0.2s" in log  # INFO logs
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_up_spawns_each_simulated_replica_with_its_own_slots() -> None:
    """What ``warmroute up`` starts for ``simulate: {slots: [1, 3]}``."""
    base_port = free_ports(2)
    text = (
        "pools:\n  - name: p\n    models: [m]\n"
        f"    simulate: {{slots: [1, 3], base_port: {base_port}, load_seconds: 0}}\n"
    )
    pool = config.parse(text).pools[0]
    replicas = pool.simulated_replicas()
    procs = [await process.spawn(pool, i, pool.replica_slots(r)) for i, r in enumerate(replicas)]
    try:
        async with aiohttp.ClientSession() as http:
            found = [await _wait_stats(http, f"http://{r.address}") for r in replicas]
        assert [s["slots"] for s in found] == [1, 3]
        assert [pool.replica_slots(r) for r in replicas] == [1, 3]  # what the registry gets
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                await process.stop(proc)
