"""``warmroute.config``'s surface is its ``__all__``: every name it exports, nothing more
(httpx's ``tests/test_exported_members.py``). Its modules are private; a public name defined
in one of them is either exported here or listed as the package's own."""

from __future__ import annotations

import ast
from pathlib import Path

import warmroute.config as config

PACKAGE = Path(config.__file__).parent

# Public names of the private modules that only the package itself uses.
INTERNAL = {"StrictModel", "located"}


def test_all_names_are_exported_and_only_they() -> None:
    assert config.__all__ == sorted(name for name in vars(config) if not name.startswith("_"))


def _defined(path: Path) -> set[str]:
    """Top-level public names a module defines (classes, functions, type aliases)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def test_every_public_definition_is_exported_or_internal() -> None:
    """So nothing is exported that the package does not define (pydantic's, the core's)."""
    defined: dict[str, str] = {}
    for path in sorted(PACKAGE.glob("_*.py")):
        if path.name != "__init__.py":
            for name in _defined(path):
                assert name not in defined, f"{name} is defined in {defined[name]} and {path.name}"
                defined[name] = path.name
    assert set(config.__all__) == defined.keys() - INTERNAL
    assert defined.keys() >= INTERNAL


def test_the_surface_is_what_the_flat_module_defined() -> None:
    """The names ``warmroute/config.py`` defined before the split, kept for every importer."""
    assert set(config.__all__) == {
        "AffinityConfig",
        "AutoscaleConfig",
        "BandConfig",
        "Config",
        "ControlConfig",
        "EnvoyClientTls",
        "EnvoyConfig",
        "EnvoyNodeConfig",
        "EppConfig",
        "EppTlsFiles",
        "FairnessConfig",
        "GrpcTlsConfig",
        "HeaderName",
        "HostPort",
        "InferencePoolRef",
        "IpPort",
        "KubernetesConfig",
        "KubernetesPoolConfig",
        "LeaderElectionConfig",
        "Name",
        "NodeAddresses",
        "OutlierConfig",
        "PoolConfig",
        "PriorityConfig",
        "ProbeConfig",
        "QueueConfig",
        "ReplicaConfig",
        "RolloutConfig",
        "RoutingConfig",
        "ScaleTarget",
        "ScrapeConfig",
        "SimulateConfig",
        "Slots",
        "TokensConfig",
        "XdsConfig",
        "default",
        "enable_epp",
        "example",
        "load",
        "parse",
    }
