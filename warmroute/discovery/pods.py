"""What a Pod means to discovery: its address and how ready it is. Pure functions.

It lives in discovery, not beside the Kubernetes clients in ``warmroute.k8s``: readiness is
discovery's vocabulary, and the clients must not import discovery (tests/unit/test_layering.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from warmroute.discovery.probe import Readiness


@dataclass(frozen=True, slots=True)
class PodState:
    name: str
    address: str | None  # ip:port, None until the pod has an IP
    readiness: Readiness
    gone: bool  # finished (Succeeded/Failed): not a replica any more


def pod_state(pod: dict[str, Any], port: int | str) -> PodState:
    """Running+Ready is READY (then probed for warmth); a deletionTimestamp is DRAINING."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    name = str(meta.get("name", ""))
    phase = status.get("phase")
    ip = status.get("podIP")
    number = _port(pod, port)
    address = f"{ip}:{number}" if ip and number else None
    gone = phase in ("Succeeded", "Failed")
    if meta.get("deletionTimestamp"):
        readiness = Readiness.DRAINING
    elif phase == "Running" and _ready(status) and address:
        readiness = Readiness.READY
    else:
        readiness = Readiness.NOT_READY
    return PodState(name, address, readiness, gone)


def _ready(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def _port(pod: dict[str, Any], port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for container in (pod.get("spec") or {}).get("containers") or ():
        for p in container.get("ports") or ():
            if p.get("name") == port:
                return int(p["containerPort"])
    return None
