"""The Envoy config we generate is accepted by the real Envoy binary and kept in envoy/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from warmroute import config
from warmroute.envoy_process import find_envoy
from warmroute.xds.bootstrap import static_bootstrap, to_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_demo_bootstrap_is_current() -> None:
    rendered = to_yaml(static_bootstrap(config.default()))
    assert (ROOT / "envoy" / "demo-bootstrap.yaml").read_text() == rendered, (
        "regenerate with: warmroute bootstrap > envoy/demo-bootstrap.yaml"
    )


def test_envoy_validates_the_bootstrap() -> None:
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(ROOT / "envoy" / "demo-bootstrap.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
