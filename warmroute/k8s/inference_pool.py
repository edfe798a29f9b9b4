"""What an ``InferencePool`` means to warmroute. Pure functions over the wire format.

The Gateway API Inference Extension's ``InferencePool`` (``inference.networking.k8s.io/v1``,
namespaced) names a pool of model-server Pods and the Endpoint Picker that routes to them:

* ``spec.selector.matchLabels`` (1..64 labels): the member Pods, in the InferencePool's own
  namespace;
* ``spec.targetPorts`` (1..8 unique ``{number}``): every ready Pod IP x every port is one
  endpoint ``ip:port``;
* ``spec.appProtocol``: ``http`` (default) or ``kubernetes.io/h2c``;
* ``spec.endpointPickerRef`` (optional): ``group`` (default ``""``), ``kind`` (default
  ``Service``), ``name``, ``port.number`` (required for a Service) and ``failureMode``
  (``FailOpen`` or ``FailClose``, default ``FailClose``): what the gateway does when the
  picker does not answer. With ``FailOpen`` it forwards requests to endpoints of its own
  choosing, bypassing warmroute's slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP = "inference.networking.k8s.io"
VERSION = "v1"
PLURAL = "inferencepools"
KIND = "InferencePool"

FAIL_OPEN = "FailOpen"
FAIL_CLOSE = "FailClose"
MAX_TARGET_PORTS = 8


@dataclass(frozen=True, slots=True)
class EndpointPicker:
    """``spec.endpointPickerRef`` with the CRD's defaults filled in."""

    name: str
    kind: str = "Service"
    group: str = ""
    port: int | None = None
    failure_mode: str = FAIL_CLOSE


@dataclass(frozen=True, slots=True)
class InferencePoolSpec:
    """The parts of an InferencePool's spec that decide membership, and its picker."""

    selector: tuple[tuple[str, str], ...]  # matchLabels, sorted by key
    target_ports: tuple[int, ...]  # in the order the InferencePool lists them
    app_protocol: str = "http"
    picker: EndpointPicker | None = None

    @property
    def match_labels(self) -> dict[str, str]:
        return dict(self.selector)

    @property
    def failure_mode(self) -> str | None:
        """The picker's failure mode, or None when the InferencePool names no picker."""
        return self.picker.failure_mode if self.picker is not None else None


def inference_pool_spec(obj: Mapping[str, Any]) -> InferencePoolSpec:
    """Parse an InferencePool object (a JSON dict). Raises ``ValueError`` naming the field
    when it is not usable (the API server's CRD validation normally prevents that)."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("spec: required")
    labels = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError("spec.selector.matchLabels: at least one label is required")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError("spec.selector.matchLabels: keys and values must be strings")
    ports = tuple(_port(p, f"spec.targetPorts[{i}]") for i, p in enumerate(_list(spec)))
    if not 1 <= len(ports) <= MAX_TARGET_PORTS:
        raise ValueError(f"spec.targetPorts: 1 to {MAX_TARGET_PORTS} ports, got {len(ports)}")
    if len(set(ports)) != len(ports):
        raise ValueError("spec.targetPorts: port number must be unique")
    ref = spec.get("endpointPickerRef")
    return InferencePoolSpec(
        selector=tuple(sorted(labels.items())),
        target_ports=ports,
        app_protocol=str(spec.get("appProtocol") or "http"),
        picker=_picker(ref) if ref is not None else None,
    )


def _list(spec: Mapping[str, Any]) -> list[Any]:
    ports = spec.get("targetPorts")
    if not isinstance(ports, list):
        raise ValueError("spec.targetPorts: required list")
    return ports


def _port(value: Any, where: str) -> int:
    number = value.get("number") if isinstance(value, Mapping) else None
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
        raise ValueError(f"{where}.number: expected a port number in 1..65535, got {number!r}")
    return number


def _picker(ref: Any) -> EndpointPicker:
    if not isinstance(ref, Mapping) or not ref.get("name"):
        raise ValueError("spec.endpointPickerRef.name: required")
    mode = ref.get("failureMode") or FAIL_CLOSE
    if mode not in (FAIL_OPEN, FAIL_CLOSE):
        raise ValueError(f"spec.endpointPickerRef.failureMode: FailOpen or FailClose, got {mode!r}")
    port = ref.get("port")
    return EndpointPicker(
        name=str(ref["name"]),
        kind=str(ref.get("kind") or "Service"),
        group=str(ref.get("group") or ""),
        port=_port(port, "spec.endpointPickerRef.port") if port is not None else None,
        failure_mode=str(mode),
    )
