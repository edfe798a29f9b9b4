"""The Envoy config we generate is accepted by the real Envoy binary and kept in envoy/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from warmroute import config
from warmroute.envoy_process import find_envoy
from warmroute.xds.bootstrap import ads_bootstrap, static_bootstrap, to_yaml

ROOT = Path(__file__).resolve().parents[2]
RENDER = {
    "demo-bootstrap.yaml": lambda: to_yaml(ads_bootstrap(config.default())),
    "demo-bootstrap-static.yaml": lambda: to_yaml(static_bootstrap(config.default())),
}


@pytest.mark.parametrize("name", sorted(RENDER))
def test_checked_in_bootstrap_is_current(name: str) -> None:
    assert (ROOT / "envoy" / name).read_text() == RENDER[name](), (
        "regenerate with: warmroute bootstrap [--static] > envoy/" + name
    )


@pytest.mark.parametrize("name", sorted(RENDER))
def test_envoy_validates_the_bootstrap(name: str) -> None:
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(ROOT / "envoy" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
