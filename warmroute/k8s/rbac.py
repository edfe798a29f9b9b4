"""The Kubernetes API calls warmroute makes, as RBAC rules: (apiGroup, resource) -> verbs.

``deploy/base/rbac.yaml`` grants exactly these (checked by tests/integration/test_deploy.py),
and the Kubernetes tests check every request warmroute sent falls within them.
``deploy/epp/rbac.yaml`` grants exactly ``EPP_REQUIRED``.
"""

from __future__ import annotations

REQUIRED: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"list", "watch", "patch"}),
    ("apps", "deployments/scale"): frozenset({"get", "patch"}),
    ("apps", "statefulsets/scale"): frozenset({"get", "patch"}),
    ("coordination.k8s.io", "leases"): frozenset({"get", "create", "update"}),
}

# `serve --epp` with its pool discovered from an InferencePool (deploy/epp): the
# InferencePool is watched by name (fieldSelector metadata.name, so RBAC may narrow it
# with resourceNames), pods are only read (no autoscaling, no deletion-cost patches),
# leases for leader election.
EPP_REQUIRED: dict[tuple[str, str], frozenset[str]] = {
    ("inference.networking.k8s.io", "inferencepools"): frozenset({"list", "watch"}),
    ("", "pods"): frozenset({"list", "watch"}),
    ("coordination.k8s.io", "leases"): frozenset({"get", "create", "update"}),
}
