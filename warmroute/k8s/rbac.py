"""The Kubernetes API calls warmroute makes, as RBAC rules: (apiGroup, resource) -> verbs.

``deploy/base/rbac.yaml`` grants exactly these (checked by tests/integration/test_deploy.py),
and the Kubernetes tests check every request warmroute sent falls within them.
"""

from __future__ import annotations

REQUIRED: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"list", "watch", "patch"}),
    ("apps", "deployments/scale"): frozenset({"get", "patch"}),
    ("apps", "statefulsets/scale"): frozenset({"get", "patch"}),
    ("coordination.k8s.io", "leases"): frozenset({"get", "create", "update"}),
}
