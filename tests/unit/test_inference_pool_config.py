"""``inference_pool`` pool config, and what an InferencePool object means (pure parsing)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kubeapi.resources import INFERENCE_POOLS, admit, make_inference_pool
from warmroute import config
from warmroute.errors import ConfigError
from warmroute.k8s.inference_pool import EndpointPicker, InferencePoolSpec, inference_pool_spec

POOL = (
    "pools:\n  - name: llama\n    models: [m]\n"
    "    inference_pool: {namespace: models, name: llama}\n"
)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "pools.yaml")
    return str(info.value)


def test_inference_pool_config_is_parsed() -> None:
    pool = config.parse(POOL).pools[0]
    assert pool.inference_pool == config.InferencePoolRef(namespace="models", name="llama")
    assert pool.all_replicas() == [] and pool.kubernetes is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("    replicas: [10.0.0.1:80]\n", "`inference_pool` cannot be combined with `replicas`"),
        ("    simulate: {replicas: 1}\n", "`inference_pool` cannot be combined with `simulate`"),
        (
            "    kubernetes: {selector: {app: x}}\n",
            "`inference_pool` cannot be combined with `kubernetes`",
        ),
        (
            "    autoscale: {max_replicas: 2}\n",
            "`autoscale` is not supported with `inference_pool`",
        ),
    ],
)
def test_inference_pool_is_the_only_source(extra: str, expected: str) -> None:
    message = _error(POOL + extra)
    assert "pools[0] (line 2)" in message and expected in message, message


def test_inference_pool_keys_are_checked() -> None:
    text = "pools:\n  - name: a\n    models: [m]\n    inference_pool: {namespace: models}\n"
    assert "pools[0].inference_pool.name (line 4): required key is missing" in _error(text)
    text = "pools:\n  - name: a\n    models: [m]\n    inference_pool: {name: A_B, pool: x}\n"
    message = _error(text)
    assert "pools[0].inference_pool.name (line 4): String should match pattern" in message
    assert "pools[0].inference_pool.pool (line 4): unknown key" in message


def _served(**kw: Any) -> dict[str, Any]:
    """An InferencePool as the API server hands it out (CRD defaults applied)."""
    obj = make_inference_pool("ns", "llama", {"app": "llama", "tier": "gpu"}, [8001, 8000], **kw)
    admit(INFERENCE_POOLS, obj)
    return obj


def test_spec_from_a_served_object() -> None:
    assert inference_pool_spec(_served(failure_mode=None)) == InferencePoolSpec(
        selector=(("app", "llama"), ("tier", "gpu")),
        target_ports=(8001, 8000),
        app_protocol="http",
        picker=EndpointPicker("warmroute-epp", "Service", "", 9002, "FailClose"),
    )
    spec = inference_pool_spec(_served(failure_mode="FailOpen"))
    assert spec.failure_mode == "FailOpen"
    assert spec.match_labels == {"app": "llama", "tier": "gpu"}
    assert inference_pool_spec(_served(picker=None)).failure_mode is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.selector.matchLabels"),
        ({"selector": {"matchLabels": {"a": "b"}}}, "spec.targetPorts"),
        ({"selector": {"matchLabels": {"a": "b"}}, "targetPorts": []}, "spec.targetPorts"),
        (
            {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 70000}]},
            "spec.targetPorts[0].number",
        ),
        (
            {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 1}] * 2},
            "port number must be unique",
        ),
        (
            {
                "selector": {"matchLabels": {"a": "b"}},
                "targetPorts": [{"number": 1}],
                "endpointPickerRef": {"name": "x", "failureMode": "Maybe"},
            },
            "spec.endpointPickerRef.failureMode",
        ),
    ],
)
def test_unusable_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        inference_pool_spec({"spec": spec})
