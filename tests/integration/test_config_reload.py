"""Config reloads: a bad file changes nothing; a good one becomes a new version."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.server import ControlPlane


def _doc(models: list[str]) -> dict[str, object]:
    return {
        "control": {
            "start_fence": False,
            "grpc": f"127.0.0.1:{free_port()}",
            "admin": f"127.0.0.1:{free_port()}",
        },
        "pools": [{"name": "p", "models": models, "probe": None, "replicas": ["10.0.0.1:80"]}],
    }


async def test_invalid_file_keeps_running_config_and_valid_file_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "warmroute.yaml"
    doc = _doc(["m1"])
    path.write_text(yaml.safe_dump(doc))
    plane = ControlPlane(Config.model_validate(doc), config_path=path)
    await plane.start()
    try:
        first = plane.rollout.status()["stable"]
        assert plane.registry.pool_for_model("m1") is not None

        bad = dict(doc, pools=[{"name": "p", "models": [], "replicas": ["x"]}])
        path.write_text(yaml.safe_dump(bad))
        with caplog.at_level(logging.ERROR, logger="warmroute.server"):
            assert await plane.reload_from_file() is False
        assert str(path) in caplog.text and "pools[0].models" in caplog.text
        # Two bad keys: two records, each one line naming the file and its key.
        rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert len(rejected) == 2
        assert all("\n" not in m and str(path) in m for m in rejected)
        assert any("pools[0].replicas[0]" in m for m in rejected)
        assert plane.rollout.status()["stable"] == first
        assert plane.registry.pool_for_model("m1") is not None
        assert plane.metrics.config_reloads.labels("invalid")._value.get() == 1

        # Editing the file is enough: the watcher notices and applies it.
        path.write_text(yaml.safe_dump(_doc(["m1", "m2"]) | {"control": doc["control"]}))
        await wait_for(
            lambda: plane.rollout.status()["stable"] != first, timeout=10, what="new version"
        )
        assert plane.registry.pool_for_model("m2") is not None
        assert plane.metrics.config_reloads.labels("applied")._value.get() == 1
    finally:
        await plane.stop()


# Issue 17's 10 s of idle time (several backstop reads, every 2 s) while the log beside
# the file is written to; the old watcher logged ~24 "change detected" lines a second.
IDLE_SECONDS = 10.0
# A log line about the config file: a change noticed, a reload, the watcher.
_ABOUT_THE_FILE = re.compile(r"change|reload|loaded from|watch", re.IGNORECASE)


async def _metrics(http: aiohttp.ClientSession, admin: str) -> dict[tuple[str, str], float]:
    """The control plane's samples by (name, the value of its one label, or "")."""
    async with http.get(f"http://{admin}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, next(iter(s.labels.values()), "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_serve_with_its_log_beside_the_config_stays_quiet_until_the_file_changes(
    tmp_path: Path,
) -> None:
    """`warmroute -v serve -c DIR/warmroute.yaml > DIR/warmroute.log`: writes to the log
    (its own, and another writer's) neither wake the watcher nor log a line; one change
    of the file is one reload."""
    doc = _doc(["m1"])
    admin = str(doc["control"]["admin"])  # type: ignore[index]
    path = tmp_path / "warmroute.yaml"
    path.write_text(yaml.safe_dump(doc))
    log_path = tmp_path / "warmroute.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "warmroute", "-v", "serve", "-c", str(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=tmp_path,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def up() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(f"serve exited:\n{log_path.read_text()}")
                try:
                    await _metrics(http, admin)
                except aiohttp.ClientError:
                    return False
                return True

            await wait_for(up, timeout=30, what="serve's admin endpoint")
            lines_at_start = len(log_path.read_text().splitlines())
            # The observation window itself (what this test measures), with another
            # writer appending to the log beside the config all along.
            loop = asyncio.get_running_loop()
            end = loop.time() + IDLE_SECONDS
            with log_path.open("a") as other:
                while loop.time() < end:
                    other.write("another writer's line\n")
                    other.flush()
                    await asyncio.sleep(0.05)
            idle = await _metrics(http, admin)
            new_lines = log_path.read_text().splitlines()[lines_at_start:]
            about_the_file = [line for line in new_lines if _ABOUT_THE_FILE.search(line)]
            assert about_the_file == [], "\n".join(about_the_file[:20])
            assert idle[("warmroute_config_file_checks_total", "event")] == 0
            assert idle[("warmroute_config_file_checks_total", "backstop")] >= 2
            assert not any(name == "warmroute_config_reloads_total" for name, _ in idle)

            # An editor's write-temp-then-rename: exactly one reload.
            temp = tmp_path / ".warmroute.yaml.tmp"
            temp.write_text(yaml.safe_dump(_doc(["m1", "m2"]) | {"control": doc["control"]}))
            os.replace(temp, path)

            async def reloaded() -> bool:
                got = await _metrics(http, admin)
                return got.get(("warmroute_config_reloads_total", "applied"), 0) >= 1

            await wait_for(reloaded, timeout=10, what="the change applied")
            # A backstop read later it is still one reload, and one line says so.
            settled = await _metrics(http, admin)
            await wait_for(
                lambda: _backstop_after(http, admin, settled), timeout=10, what="a backstop read"
            )
            after = await _metrics(http, admin)
            assert after[("warmroute_config_reloads_total", "applied")] == 1
            assert ("warmroute_config_reloads_total", "invalid") not in after
            assert 1 <= after[("warmroute_config_file_checks_total", "event")] <= 2
            loaded = [line for line in log_path.read_text().splitlines() if "loaded from" in line]
            assert len(loaded) == 1, loaded
            about_the_file = [
                line for line in log_path.read_text().splitlines() if _ABOUT_THE_FILE.search(line)
            ]
            assert about_the_file == loaded, about_the_file[:20]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _backstop_after(
    http: aiohttp.ClientSession, admin: str, before: dict[tuple[str, str], float]
) -> bool:
    key = ("warmroute_config_file_checks_total", "backstop")
    return (await _metrics(http, admin))[key] > before[key]
