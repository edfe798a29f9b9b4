"""The real-vLLM tier: real vLLM replicas (CPU build, tiny model, LoRA adapters).

Everything here is marked ``vllm``. It runs only when asked, since each replica takes
~1.2 GB and real CPU: with ``WARMROUTE_VLLM_DIR`` set (``bash scripts/test-vllm.sh`` sets it
up and runs the tier) or with ``-m vllm`` and the machine's install in ``/work/real-vllm``.
Otherwise, and when the install is missing, every test is skipped with the reason.

The two replicas start once per session, in parallel (~30-60 s), and every test leaves
them idle with the adapters they started with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.vllm.server import ENV, VllmServer, missing, vllm_dir

HERE = Path(__file__).resolve().parent
SLOTS = 4  # --max-num-seqs of every replica, and the pool's slots in front of them
MAX_LORAS = 2
START_TIMEOUT = 300.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [i for i in items if HERE in i.path.resolve().parents]
    for item in mine:
        item.add_marker(pytest.mark.vllm)
    reason = _skip_reason(config)
    if reason:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))


def _skip_reason(config: pytest.Config) -> str | None:
    asked = bool(os.environ.get(ENV)) or config.getoption("markexpr", "") == "vllm"
    if not asked:
        return (
            "the real-vLLM tier runs only when asked: `bash scripts/test-vllm.sh`, or "
            f"`pytest -m vllm` with an install in {vllm_dir()} (or ${ENV} set)"
        )
    why = missing(vllm_dir())
    return f"real vLLM not set up ({why}): `bash scripts/test-vllm.sh` installs it" if why else None


@dataclass(frozen=True)
class Replicas:
    """``a`` serves ``tiny`` and adapter ``a0``; ``b`` serves ``tiny``, ``a0`` and ``a1``.
    Both: ``--max-num-seqs 4``, ``--max-loras 2``, runtime LoRA loading allowed."""

    a: VllmServer
    b: VllmServer
    loras: Path

    @property
    def both(self) -> tuple[VllmServer, VllmServer]:
        return (self.a, self.b)


@pytest.fixture(scope="session")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    directory = vllm_dir()
    loras = directory / "loras"
    logs = tmp_path_factory.mktemp("vllm")
    common = ["--enable-lora", f"--max-loras={MAX_LORAS}", "--max-lora-rank=8"]
    a = VllmServer(directory, free_port(), [*common, "--lora-modules",
                   f"a0={loras / 'adapter-0'}"], logs / "a.log", SLOTS)  # fmt: skip
    b = VllmServer(directory, free_port(), [*common, "--lora-modules",
                   f"a0={loras / 'adapter-0'}", f"a1={loras / 'adapter-1'}"],
                   logs / "b.log", SLOTS)  # fmt: skip
    try:
        for server in (a, b):
            server.start()
        for server in (a, b):
            server.wait_healthy(START_TIMEOUT)
        print(f"\nvLLM replicas healthy after {a.started_in:.1f} s and {b.started_in:.1f} s")
        yield Replicas(a, b, loras)
    finally:
        for server in (a, b):
            server.stop()
