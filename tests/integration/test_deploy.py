"""deploy/ is valid offline: manifests against the client's model schemas, the config,
the Envoy bootstrap (validated by Envoy itself) and least-privilege RBAC."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml

from warmroute import config
from warmroute.envoy_process import find_envoy
from warmroute.k8s.rbac import REQUIRED
from warmroute.xds.bootstrap import ads_bootstrap, to_yaml

BASE = Path(__file__).resolve().parents[2] / "deploy" / "base"
KINDS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}


def _docs() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if doc:
                out.append((name, doc))
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


@pytest.mark.parametrize(("name", "doc"), _docs(), ids=lambda x: x if isinstance(x, str) else "")
def test_manifest_matches_the_api_schema(name: str, doc: dict[str, Any]) -> None:
    model = KINDS[(doc["apiVersion"], doc["kind"])]
    assert _check(doc, model, f"{name}:{doc['kind']}") == []


def test_kustomization_files_exist() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for gen in kustomization["configMapGenerator"]:
        for entry in gen["files"]:
            assert (BASE / entry.split("=", 1)[-1]).is_file()


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


def test_rbac_grants_exactly_the_calls_warmroute_makes() -> None:
    (role,) = [d for _, d in _docs() if d["kind"] == "Role"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == {k: set(v) for k, v in REQUIRED.items()}


def test_model_pool_drains_before_stopping() -> None:
    (pool,) = [d for _, d in _docs() if d["metadata"]["name"] == "sim-model"]
    container = pool["spec"]["template"]["spec"]["containers"][0]
    assert "in_flight" in str(container["lifecycle"]["preStop"])
    assert pool["spec"]["template"]["metadata"]["labels"] == {"app": "sim-model"}
