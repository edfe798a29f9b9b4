from __future__ import annotations

from typing import Any

import pytest

from warmroute.discovery.pods import pod_state
from warmroute.discovery.probe import Readiness


def _pod(**kw: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": {
            "phase": kw.get("phase", "Running"),
            "podIP": kw.get("ip", "10.0.0.1"),
            "conditions": [{"type": "Ready", "status": "True" if kw.get("ready") else "False"}],
        },
    }
    if kw.get("deleting"):
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return pod


@pytest.mark.parametrize(
    ("pod", "readiness", "gone"),
    [
        (_pod(ready=True), Readiness.READY, False),
        (_pod(ready=False), Readiness.NOT_READY, False),
        (_pod(ready=True, phase="Pending"), Readiness.NOT_READY, False),
        (_pod(ready=True, deleting=True), Readiness.DRAINING, False),
        (_pod(ready=False, phase="Succeeded"), Readiness.NOT_READY, True),
    ],
)
def test_pod_state(pod: dict[str, Any], readiness: Readiness, gone: bool) -> None:
    state = pod_state(pod, "http")
    assert (state.readiness, state.gone, state.address) == (readiness, gone, "10.0.0.1:8000")


def test_port_by_number_or_name_and_missing_ip() -> None:
    assert pod_state(_pod(ready=True), 9000).address == "10.0.0.1:9000"
    assert pod_state(_pod(ready=True), "grpc").address is None
    no_ip = pod_state(_pod(ready=True, ip=None), "http")
    assert no_ip.address is None and no_ip.readiness is Readiness.NOT_READY
