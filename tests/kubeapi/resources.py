"""The resource types the test API server serves, and builders for realistic objects.

A :class:`ResourceType` carries what kube-apiserver's per-type registry strategy decides:
whether DELETE is graceful (pods), whether PUT may create (leases) or must carry a
resourceVersion (leases), whether writes to the main resource ignore ``status``, whether the
type has a ``scale`` subresource, and which ``fieldSelector`` fields it supports.

Objects are plain JSON dicts in the wire format (camelCase), deserializable by the official
client into ``V1Pod``, ``V1Deployment``, ``V1StatefulSet``, ``V1Scale`` and ``V1Lease``.
``InferencePool`` (``inference.networking.k8s.io/v1``, a CRD, served as custom objects) is
defaulted and validated like its CRD schema (see :func:`admit`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.kubeapi.selectors import FieldGetter
from tests.kubeapi.status import ApiError, invalid

Obj = dict[str, Any]


def now_rfc3339() -> str:
    """``metav1.Time`` wire format: RFC 3339 in UTC, whole seconds."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _path(*keys: str) -> FieldGetter:
    def get(obj: Mapping[str, Any]) -> str:
        node: Any = obj
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, bool):
            return "true" if node else "false"
        return "" if node is None else str(node)

    return get


_META_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" is the core group, served under /api
    version: str
    plural: str
    kind: str
    graceful_delete: bool = False
    allow_create_on_update: bool = False
    allow_unconditional_update: bool = True
    has_status: bool = False
    has_generation: bool = False
    scalable: bool = False
    fields: Mapping[str, FieldGetter] = field(default_factory=lambda: dict(_META_FIELDS))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


PODS = ResourceType(
    "",
    "v1",
    "pods",
    "Pod",
    graceful_delete=True,
    has_status=True,
    fields={
        **_META_FIELDS,
        "spec.nodeName": _path("spec", "nodeName"),
        "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": _path("spec", "hostNetwork"),
        "status.phase": _path("status", "phase"),
        "status.podIP": _path("status", "podIP"),
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
)
DEPLOYMENTS = ResourceType(
    "apps", "v1", "deployments", "Deployment", has_status=True, has_generation=True, scalable=True
)
STATEFULSETS = ResourceType(
    "apps", "v1", "statefulsets", "StatefulSet", has_status=True, has_generation=True, scalable=True
)
LEASES = ResourceType(
    "coordination.k8s.io",
    "v1",
    "leases",
    "Lease",
    allow_create_on_update=True,
    allow_unconditional_update=False,
)
# A CRD with the status subresource: writes to the main resource keep status, and the
# generation moves with spec.
INFERENCE_POOLS = ResourceType(
    "inference.networking.k8s.io",
    "v1",
    "inferencepools",
    "InferencePool",
    has_status=True,
    has_generation=True,
)
RESOURCE_TYPES = {
    (rt.group, rt.version, rt.plural): rt
    for rt in (PODS, DEPLOYMENTS, STATEFULSETS, LEASES, INFERENCE_POOLS)
}
BY_KIND = {rt.kind: rt for rt in RESOURCE_TYPES.values()}


def make_pod(
    namespace: str,
    name: str,
    labels: Mapping[str, str],
    ip: str | None,
    ready: bool,
    phase: str,
    annotations: Mapping[str, str] | None,
    container_port: int,
    node_name: str = "node-1",
) -> Obj:
    """A scheduled pod with one container, as the kubelet would have reported it."""
    started = now_rfc3339()
    flag = "True" if ready else "False"
    status: Obj = {
        "phase": phase,
        "hostIP": "192.168.0.10",
        "startTime": started,
        "qosClass": "BestEffort",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": started},
            {"type": "Ready", "status": flag, "lastTransitionTime": started},
        ],
        "containerStatuses": [
            {
                "name": "server",
                "image": "warmroute/replica:test",
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "started": phase == "Running",
                "state": {"running": {"startedAt": started}} if phase == "Running" else {},
            }
        ],
    }
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    metadata: Obj = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "image": "warmroute/replica:test",
                    "ports": [{"containerPort": container_port, "name": "http", "protocol": "TCP"}],
                }
            ],
            "nodeName": node_name,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
        },
        "status": status,
    }


def set_condition(pod: Obj, kind: str, ready: bool) -> None:
    """Set a pod condition in place, moving ``lastTransitionTime`` only on a change."""
    flag = "True" if ready else "False"
    for cond in pod["status"].setdefault("conditions", []):
        if cond.get("type") == kind:
            if cond.get("status") != flag:
                cond["status"] = flag
                cond["lastTransitionTime"] = now_rfc3339()
            return
    pod["status"]["conditions"].append(
        {"type": kind, "status": flag, "lastTransitionTime": now_rfc3339()}
    )


def make_workload(
    rt: ResourceType,
    namespace: str,
    name: str,
    replicas: int,
    selector: Mapping[str, str] | None,
    container_port: int,
) -> Obj:
    """A Deployment or StatefulSet whose controller has caught up (status = spec)."""
    match = dict(selector or {"app": name})
    spec: Obj = {
        "replicas": replicas,
        "selector": {"matchLabels": match},
        "template": {
            "metadata": {"labels": dict(match)},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "warmroute/replica:test",
                        "ports": [{"containerPort": container_port, "name": "http"}],
                    }
                ]
            },
        },
    }
    if rt is STATEFULSETS:
        spec["serviceName"] = name
    return {
        "apiVersion": rt.api_version,
        "kind": rt.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(match)},
        "spec": spec,
        "status": {"replicas": replicas, "readyReplicas": replicas, "observedGeneration": 1},
    }


def make_inference_pool(
    namespace: str,
    name: str,
    selector: Mapping[str, str],
    target_ports: list[int],
    picker: str | None = "warmroute-epp",
    picker_port: int = 9002,
    failure_mode: str | None = "FailClose",
    app_protocol: str | None = None,
) -> Obj:
    """An ``InferencePool`` as a platform admin writes it: its model-server pods, their
    ports, and an Endpoint Picker Service (``picker=None``: none)."""
    spec: Obj = {
        "selector": {"matchLabels": dict(selector)},
        "targetPorts": [{"number": n} for n in target_ports],
    }
    if app_protocol is not None:
        spec["appProtocol"] = app_protocol
    if picker is not None:
        ref: Obj = {"name": picker, "port": {"number": picker_port}}
        if failure_mode is not None:
            ref["failureMode"] = failure_mode
        spec["endpointPickerRef"] = ref
    return {
        "apiVersion": INFERENCE_POOLS.api_version,
        "kind": INFERENCE_POOLS.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def selector_string(label_selector: Mapping[str, Any] | None) -> str:
    """``metav1.LabelSelector`` to its string form, as ``Scale.status.selector`` shows it."""
    parts = [
        f"{k}={v}" for k, v in sorted(((label_selector or {}).get("matchLabels") or {}).items())
    ]
    for expr in (label_selector or {}).get("matchExpressions") or ():
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            parts.append(f"{key} {op.lower()} ({','.join(sorted(values))})")
    return ",".join(parts)


def scale_view(obj: Obj) -> Obj:
    """The ``autoscaling/v1`` ``Scale`` of a workload. ``spec.replicas`` is omitted at 0, as
    the real API omits it (``json:"replicas,omitempty"``)."""
    meta = obj["metadata"]
    spec_replicas = int(obj["spec"].get("replicas", 1))
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": spec_replicas} if spec_replicas else {},
        "status": {
            "replicas": int((obj.get("status") or {}).get("replicas", 0)),
            "selector": selector_string(obj["spec"].get("selector")),
        },
    }


# metav1.MicroTime is parsed with Go's layout "2006-01-02T15:04:05.000000Z07:00": exactly six
# fractional digits and an explicit zone, else the real server rejects the body with 400.
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")


def admit(rt: ResourceType, obj: Obj) -> None:
    """Validate a create/update/patch result and canonicalize it in place, as the real
    server's decode + validation does: 422 Invalid for bad values, 400 for undecodable
    MicroTimes, which are re-rendered as the server renders them (UTC, ``Z``)."""
    name = obj["metadata"].get("name", "")
    if rt.scalable:
        replicas = obj["spec"].get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            why = "must be greater than or equal to 0"
            raise invalid(rt.group, rt.kind, name, "spec.replicas", replicas, why)
    if rt is INFERENCE_POOLS:
        _admit_inference_pool(obj)
    if rt is LEASES:
        spec = obj.get("spec") or {}
        for key in ("acquireTime", "renewTime"):
            value = spec.get(key)
            if value is None:
                continue
            if not (isinstance(value, str) and _MICRO_TIME.match(value)):
                raise ApiError(
                    400,
                    f'Lease in version "v1" cannot be handled as a Lease: parsing time '
                    f'"{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse',
                )
            when = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
            spec[key] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and (not isinstance(duration, int) or duration <= 0):
            why = "must be greater than 0"
            raise invalid(rt.group, rt.kind, name, "spec.leaseDurationSeconds", duration, why)
        transitions = spec.get("leaseTransitions")
        if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
            why = "must be greater than or equal to 0"
            raise invalid(rt.group, rt.kind, name, "spec.leaseTransitions", transitions, why)


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PICKER_KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def _admit_inference_pool(obj: Obj) -> None:
    """The v1 CRD's structural defaults and validation (gateway-api-inference-extension
    ``api/v1/inferencepool_types.go``): 422 naming the first bad field."""
    name = obj["metadata"].get("name", "")

    def bad(field: str, value: Any, why: str) -> ApiError:
        return invalid(INFERENCE_POOLS.group, INFERENCE_POOLS.kind, name, field, value, why)

    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise bad("spec", spec, "Required value")
    labels = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(labels, dict) or not 1 <= len(labels) <= 64:
        raise bad("spec.selector.matchLabels", labels, "should have 1 to 64 properties")
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise bad(f"spec.selector.matchLabels.{key}", value, "not a valid label value")
    ports = spec.get("targetPorts")
    if not isinstance(ports, list) or not 1 <= len(ports) <= 8:
        raise bad("spec.targetPorts", ports, "should have 1 to 8 items")
    for i, port in enumerate(ports):
        _check_port(port, f"spec.targetPorts[{i}]", bad)
    if len({p["number"] for p in ports}) != len(ports):
        raise bad("spec.targetPorts", ports, "port number must be unique")
    spec.setdefault("appProtocol", "http")
    if spec["appProtocol"] not in ("http", "kubernetes.io/h2c"):
        why = 'supported values: "http", "kubernetes.io/h2c"'
        raise bad("spec.appProtocol", spec["appProtocol"], why)
    ref = spec.get("endpointPickerRef")
    if ref is None:
        return
    if not isinstance(ref, dict) or not ref.get("name"):
        raise bad("spec.endpointPickerRef.name", None, "Required value")
    ref.setdefault("group", "")
    ref.setdefault("kind", "Service")
    ref.setdefault("failureMode", "FailClose")
    if not _PICKER_KIND.match(str(ref["kind"])):
        raise bad("spec.endpointPickerRef.kind", ref["kind"], "not a valid kind")
    if ref["failureMode"] not in ("FailOpen", "FailClose"):
        why = 'supported values: "FailOpen", "FailClose"'
        raise bad("spec.endpointPickerRef.failureMode", ref["failureMode"], why)
    if "port" in ref:
        _check_port(ref["port"], "spec.endpointPickerRef.port", bad)
    elif ref["kind"] == "Service":
        why = "port is required when kind is 'Service' or unspecified (defaults to 'Service')"
        raise bad("spec.endpointPickerRef", ref, why)


def _check_port(port: Any, field: str, bad: Callable[[str, Any, str], ApiError]) -> None:
    number = port.get("number") if isinstance(port, dict) else None
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
        raise bad(f"{field}.number", number, "should be in the range 1 to 65535")
