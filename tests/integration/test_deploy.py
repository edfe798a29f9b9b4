"""deploy/ is valid offline: manifests against the client's model schemas (the
InferencePool and HTTPRoute custom objects against their v1 schemas, by hand), the config,
the Envoy bootstrap (validated by Envoy itself) and least-privilege RBAC.

``deploy/base``: warmroute with its own Envoy. ``deploy/epp``: warmroute as the Endpoint
Picker of an InferencePool behind someone else's gateway."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml

from warmroute import config
from warmroute.envoy_process import find_envoy
from warmroute.k8s.rbac import EPP_REQUIRED, REQUIRED
from warmroute.xds.bootstrap import ads_bootstrap, to_yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "base"
EPP = DEPLOY / "epp"
KINDS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}


# Custom resources the client has no model for: checked by hand below.
CUSTOM_KINDS = {
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}


def _docs(root: Path = BASE) -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((root / name).read_text()):
            if doc:
                out.append((f"{root.name}/{name}", doc))
    return out


def _check(value: Any, type_name: str, path: str) -> list[str]:
    """Problems with ``value`` as an instance of the client's model ``type_name``."""
    if type_name in ("str", "int", "bool", "float", "object", "datetime"):
        ok = {"str": str, "int": (int, str), "bool": bool, "float": (int, float)}.get(type_name)
        return [] if ok is None or isinstance(value, ok) else [f"{path}: expected {type_name}"]
    if m := re.fullmatch(r"[Ll]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in _check(v, m.group(1), f"{path}[{i}]")]
    if m := re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        inner = m.group(1) or m.group(2)
        return [p for k, v in value.items() for p in _check(v, inner, f"{path}.{k}")]
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected {type_name}"]
    by_json = {v: k for k, v in model.attribute_map.items()}
    problems = []
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            problems.append(f"{path}.{key}: not a field of {type_name}")
        else:
            problems += _check(v, model.openapi_types[attr], f"{path}.{key}")
    return problems


@pytest.mark.parametrize(
    ("name", "doc"), _docs(BASE) + _docs(EPP), ids=lambda x: x if isinstance(x, str) else ""
)
def test_manifest_matches_the_api_schema(name: str, doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_KINDS:
        return  # test_epp_custom_resources_match_their_v1_schemas
    assert _check(doc, KINDS[key], f"{name}:{doc['kind']}") == []


@pytest.mark.parametrize("root", [BASE, EPP], ids=["base", "epp"])
def test_kustomization_files_exist(root: Path) -> None:
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (root / name).is_file()
    for gen in kustomization["configMapGenerator"]:
        for entry in gen["files"]:
            assert (root / entry.split("=", 1)[-1]).is_file()


def test_config_is_valid_and_bootstrap_is_current_and_accepted_by_envoy() -> None:
    cfg = config.load(BASE / "warmroute-config.yaml")
    rendered = to_yaml(ads_bootstrap(cfg))
    assert (BASE / "envoy-bootstrap.yaml").read_text() == rendered, (
        "regenerate: warmroute bootstrap -c deploy/base/warmroute-config.yaml "
        "> deploy/base/envoy-bootstrap.yaml"
    )
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(BASE / "envoy-bootstrap.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _granted(root: Path) -> dict[tuple[str, str], set[str]]:
    (role,) = [d for _, d in _docs(root) if d["kind"] == "Role"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_grants_exactly_the_calls_warmroute_makes() -> None:
    assert _granted(BASE) == {k: set(v) for k, v in REQUIRED.items()}
    assert _granted(EPP) == {k: set(v) for k, v in EPP_REQUIRED.items()}


def test_model_pool_drains_before_stopping() -> None:
    (pool,) = [d for _, d in _docs() if d["metadata"]["name"] == "sim-model"]
    container = pool["spec"]["template"]["spec"]["containers"][0]
    assert "in_flight" in str(container["lifecycle"]["preStop"])
    assert pool["spec"]["template"]["metadata"]["labels"] == {"app": "sim-model"}


# -- deploy/epp -------------------------------------------------------------------------------

# The InferencePool v1 schema (gateway-api-inference-extension api/v1/inferencepool_types.go
# and its CRD): allowed keys per object, and which are required.
_POOL_KEYS = {
    "": ({"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"}),
    "spec": (
        {"selector", "targetPorts", "appProtocol", "endpointPickerRef"},
        {"selector", "targetPorts"},
    ),
    "spec.selector": ({"matchLabels"}, {"matchLabels"}),
    "spec.endpointPickerRef": ({"group", "kind", "name", "port", "failureMode"}, {"name"}),
    "spec.endpointPickerRef.port": ({"number"}, {"number"}),
}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _keys(obj: dict[str, Any], path: str) -> list[str]:
    allowed, required = _POOL_KEYS[path]
    return [f"{path}.{k}: not in the v1 schema" for k in set(obj) - allowed] + [
        f"{path}.{k}: required" for k in required - set(obj)
    ]


def _inference_pool_problems(doc: dict[str, Any]) -> list[str]:
    problems = _keys(doc, "")
    spec = doc["spec"]
    problems += _keys(spec, "spec") + _keys(spec["selector"], "spec.selector")
    labels = spec["selector"]["matchLabels"]
    if not 1 <= len(labels) <= 64:
        problems.append("spec.selector.matchLabels: 1 to 64 labels")
    problems += [
        f"spec.selector.matchLabels.{k}: not a label value"
        for k, v in labels.items()
        if not (isinstance(v, str) and len(v) <= 63 and _LABEL_VALUE.match(v))
    ]
    ports = spec["targetPorts"]
    if not 1 <= len(ports) <= 8:
        problems.append("spec.targetPorts: 1 to 8 ports")
    for i, port in enumerate(ports):
        if set(port) != {"number"} or not 1 <= port["number"] <= 65535:
            problems.append(f"spec.targetPorts[{i}]: exactly {{number: 1..65535}}")
    if len({p.get("number") for p in ports}) != len(ports):
        problems.append("spec.targetPorts: port number must be unique")
    if spec.get("appProtocol", "http") not in ("http", "kubernetes.io/h2c"):
        problems.append("spec.appProtocol: http or kubernetes.io/h2c")
    ref = spec.get("endpointPickerRef")
    if ref is not None:
        problems += _keys(ref, "spec.endpointPickerRef")
        if ref.get("kind", "Service") == "Service" and "port" not in ref:
            problems.append("spec.endpointPickerRef.port: required for a Service")
        if "port" in ref:
            problems += _keys(ref["port"], "spec.endpointPickerRef.port")
        if ref.get("failureMode", "FailClose") not in ("FailOpen", "FailClose"):
            problems.append("spec.endpointPickerRef.failureMode: FailOpen or FailClose")
    return problems


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [
        d for _, d in _docs(EPP) if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return doc


def test_epp_custom_resources_match_their_v1_schemas() -> None:
    pool = _one("InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert _inference_pool_problems(pool) == []
    # The checker itself catches what the CRD would reject.
    bad = yaml.safe_load(yaml.safe_dump(pool))
    bad["spec"]["targetPorts"] = [{"number": 8000}] * 9
    bad["spec"]["endpointPickerRef"].pop("port")
    bad["spec"]["extensionRef"] = {"name": "v1alpha2-field"}
    assert len(_inference_pool_problems(bad)) == 4
    route = _one("HTTPRoute")
    assert set(route["spec"]) == {"parentRefs", "rules"}
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "sim-model"}
    ]


def test_epp_pieces_fit_together() -> None:
    namespace = yaml.safe_load((EPP / "kustomization.yaml").read_text())["namespace"]
    cfg = config.enable_epp(config.load(EPP / "warmroute-config.yaml"))
    (pool_cfg,) = cfg.pools
    assert cfg.epp.enabled and cfg.epp_pool == pool_cfg.name and cfg.epp.tls is True
    pool, service = _one("InferencePool"), _one("Service", "warmroute-epp")
    models, warmroute = _one("Deployment", "sim-model"), _one("Deployment", "warmroute")
    # The config discovers this InferencePool...
    assert pool_cfg.inference_pool is not None
    assert (pool_cfg.inference_pool.namespace, pool_cfg.inference_pool.name) == (
        namespace, pool["metadata"]["name"],
    )  # fmt: skip
    assert cfg.kubernetes.leader_election.namespace == namespace
    # ...which selects the model servers on their port...
    template = models["spec"]["template"]
    assert pool["spec"]["selector"]["matchLabels"] == template["metadata"]["labels"]
    container_ports = {p["containerPort"] for c in template["spec"]["containers"]
                       for p in c["ports"]}  # fmt: skip
    assert {p["number"] for p in pool["spec"]["targetPorts"]} <= container_ports
    # ...and names warmroute's Service as its picker, on the port warmroute listens on.
    ref = pool["spec"]["endpointPickerRef"]
    (port,) = service["spec"]["ports"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] == port["port"] == 9002
    assert port["appProtocol"] == "http2"
    (container,) = warmroute["spec"]["template"]["spec"]["containers"]
    grpc = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
    assert cfg.control.grpc.rpartition(":")[2] == str(grpc) == "9002"
    assert "--epp" in container["args"]
    assert service["spec"]["selector"] == warmroute["spec"]["template"]["metadata"]["labels"]
    # RBAC narrows InferencePool access to this one pool.
    (rule,) = [r for r in _one("Role")["rules"] if "inferencepools" in r["resources"]]
    assert rule["resourceNames"] == [pool["metadata"]["name"]]


def test_epp_config_passes_config_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "warmroute", "config", "check", str(EPP / "warmroute-config.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout
