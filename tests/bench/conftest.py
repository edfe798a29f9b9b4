"""The benchmarks' own tier: unit tests of bench/'s pure parts and a smoke run of every
scenario. Everything here is marked ``bench`` (``pytest -m bench`` / ``-m "not bench"``)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.bench)
