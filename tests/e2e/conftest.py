"""Fixtures that start the real parts of an end-to-end test and always stop them.

Each fixture is a factory (a test says what it needs: replicas, slots, variant...) that
registers every part it starts on one exit stack; teardown unwinds the stack whatever the
test did, so a failing assertion never leaves an Envoy, a control plane or a port behind.
Function-scoped: every test gets fresh metrics and counters to assert on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, Any

import pytest

from tests.e2e.kube_stack import KubeStack, KubeStackFactory, start_kube_stack
from tests.e2e.stack import (
    MODEL,
    EnvoyFactory,
    PlaneFactory,
    SimFactory,
    Stack,
    StackFactory,
    UpFactory,
    start_stack,
)
from tests.kubeapi.server import KubeApiServer
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime

pytestmark = pytest.mark.e2e


@pytest.fixture
async def cleanup() -> AsyncIterator[AsyncExitStack]:
    """Where the factories below register what they started; unwound after the test."""
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def stack_factory(cleanup: AsyncExitStack) -> StackFactory:
    """``await stack_factory(replicas=1, ...)``: :func:`start_stack`, stopped after the test."""

    async def make(**options: Any) -> Stack:
        stack = await start_stack(**options)
        cleanup.push_async_callback(stack.stop)
        return stack

    return make


@pytest.fixture
def sim_factory(cleanup: AsyncExitStack) -> SimFactory:
    """``await sim_factory(slots=1, service_ms=5, model=...)``: a started replica."""

    async def make(
        slots: int = 1,
        load_seconds: float = 0.0,
        service_ms: float = 50.0,
        seed: int = 0,
        model: str = MODEL,
    ) -> SimReplica:
        sim = SimReplica(slots, load_seconds, ServiceTime("fixed", service_ms), seed=seed,
                         model=model)  # fmt: skip
        cleanup.push_async_callback(sim.stop)  # safe before start: a failed bind leaks nothing
        await sim.start("127.0.0.1", 0)
        return sim

    return make


@pytest.fixture
def plane_factory(cleanup: AsyncExitStack) -> PlaneFactory:
    """A started :class:`ControlPlane` for ``config``."""

    async def make(config: Config) -> ControlPlane:
        plane = ControlPlane(config)
        cleanup.push_async_callback(plane.stop)
        await plane.start()
        return plane

    return make


@pytest.fixture
def envoy_factory(cleanup: AsyncExitStack) -> EnvoyFactory:
    """A started Envoy: ``await envoy_factory(bootstrap_json, admin, log_level=...)``."""

    async def make(bootstrap: str, admin: str, **options: Any) -> EnvoyProcess:
        envoy = EnvoyProcess(bootstrap, admin, **options)
        cleanup.push_async_callback(envoy.stop)
        await envoy.start()
        return envoy

    return make


@pytest.fixture
def kube_stack_factory(cleanup: AsyncExitStack) -> KubeStackFactory:
    """:func:`start_kube_stack` (test API server included), stopped after the test."""

    async def make(api: KubeApiServer | None = None, **options: Any) -> KubeStack:
        stack = await start_kube_stack(api, **options)
        cleanup.push_async_callback(stack.stop)
        return stack

    return make


@pytest.fixture
def up_factory(cleanup: AsyncExitStack) -> UpFactory:
    """``warmroute up -c <config> --quiet`` as a child process; killed after the test if it
    is still running (its whole process group when it has its own session)."""

    async def make(
        config: Path, output: IO[bytes] | int = asyncio.subprocess.DEVNULL,
        new_session: bool = False,
    ) -> asyncio.subprocess.Process:  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "warmroute", "up", "-c", str(config), "--quiet",
            stdout=output, stderr=asyncio.subprocess.STDOUT, start_new_session=new_session,
        )  # fmt: skip

        async def kill() -> None:
            if proc.returncode is None:
                if new_session:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                await proc.wait()

        cleanup.push_async_callback(kill)
        return proc

    return make
