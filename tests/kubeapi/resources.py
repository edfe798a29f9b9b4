"""The resource types the test API server serves, and builders for realistic objects.

A :class:`ResourceType` carries what kube-apiserver's per-type registry strategy decides:
whether DELETE is graceful (pods), whether PUT may create (leases) or must carry a
resourceVersion (leases), whether writes to the main resource ignore ``status``, whether the
type has a ``scale`` subresource, and which ``fieldSelector`` fields it supports.

Objects are plain JSON dicts in the wire format (camelCase), deserializable by the official
client into ``V1Pod``, ``V1Deployment``, ``V1StatefulSet``, ``V1Scale`` and ``V1Lease``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
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
RESOURCE_TYPES = {
    (rt.group, rt.version, rt.plural): rt for rt in (PODS, DEPLOYMENTS, STATEFULSETS, LEASES)
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
