"""Config reloads: a bad file changes nothing; a good one becomes a new version."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

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
