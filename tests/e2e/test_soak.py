"""`warmroute soak` as a user runs it, with the faults of issue 17: SIGKILL of the control
plane with long requests in flight, and a replica failing every request fast while its
health check stays green. The books must balance with nothing on a full replica."""

from __future__ import annotations

import asyncio
import re
import sys


async def test_soak_with_kill_9_and_a_failing_replica_balances_its_books() -> None:
    # Seed 2 draws "kill -9 control plane" first and "failing replica" second.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmroute", "soak", "--duration", "14", "--replicas", "3",
        "--clients", "6", "--seed", "2", "--faults", "kill -9 control plane,failing replica",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    print(text)
    assert proc.returncode == 0, text
    assert text.rstrip().endswith("PASS")
    injected = re.search(r"faults injected: \{(.*)\}", text)
    assert injected is not None
    assert "'kill -9 control plane'" in injected.group(1)
    assert "'failing replica'" in injected.group(1)
    assert "requests that reached a full replica: 0;" in text
    assert re.search(r"hung 0\b", text) and "leases left 0," in text
