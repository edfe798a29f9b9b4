"""The architecture as a table, checked over every module's imports with ``ast``.

``LAYERS`` says which of warmroute's units (a subpackage, or a top-level module) each unit
may import. Read it top to bottom: the pure core, the adapters around it, the wiring and
entry points. Every import of every module under ``warmroute/`` must be an allowed edge,
lazy and ``TYPE_CHECKING`` imports included (they couple the code just the same). A new
unit must be placed in the table before it can be imported at all.

``PENDING`` lists edges the architecture forbids but the code still has, each with its
planned fix; the test fails once one disappears, so the list only shrinks.

The state core is checked more strictly too: only the standard library, minus I/O. So is
the config package: beyond that, only pydantic and YAML; and the rest of the code (tests and
benchmarks too) sees it only through ``warmroute.config``, never its private modules. The
director is protocol-neutral: no gRPC, no Envoy message, no front end; the two front ends
(``extproc``: own Envoys, ``epp``: the endpoint picker) never import each other, and share
request parsing through ``request``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "warmroute"
STATE = PACKAGE / "state"
DIRECTOR = PACKAGE / "director"
CONFIG = PACKAGE / "config"

_ENTRY = {"cli", "up", "soak", "__main__"}  # processes and commands: they wire the rest


def _units(names: str) -> frozenset[str]:
    return frozenset(names.split())


LAYERS: dict[str, frozenset[str]] = {
    # -- the core and its vocabulary ---------------------------------------------------------
    "errors": _units(""),  # the error tree; each error has a code
    "envoy_names": _units(""),  # metadata names Envoy and the request path agree on
    "state": _units("errors"),  # pure, synchronous, no I/O: pools, replicas, leases, waiters
    "config": _units("errors state"),  # the validated config; builds the core's PoolSpecs
    "children": _units(""),  # child-process plumbing (parent death, environment)
    "view": _units(""),  # renders /state documents as text
    "warmroute": _units(""),  # the package's own __init__
    "defaults": _units(""),  # packaged demo config (data)
    # -- adapters: each sees the core, never the reverse -------------------------------------
    "k8s": _units("config"),  # Kubernetes API clients (watch, scale, lease): no discovery
    "discovery": _units("config k8s state"),  # replicas and phases in, typed events out
    "xds": _units("config envoy_names state"),  # Envoy resources, snapshots, ADS streams
    "metrics": _units("errors state xds"),  # a sink: adapters record, gauges read views
    # -- the request path: one director, shared request parsing, two front ends ----------------
    "director": _units("errors metrics state"),  # the decision; protocol-neutral (see below)
    "request": _units("envoy_names errors state"),  # ext_proc parsing and answers both share
    "extproc": _units("director envoy_names errors metrics request state"),  # own-Envoy mode
    "epp": _units("config director envoy_names errors metrics request state"),  # picker mode
    "autoscale": _units("config state"),  # the Scaler protocol only; never a platform
    "sim": _units("children config discovery"),  # simulated replicas + their local scaler
    "admin": _units("metrics state"),  # /metrics and /state
    "fence": _units("state"),  # the start's and takeover's fence: its grace timer
    # -- wiring and entry points ---------------------------------------------------------------
    "config_watch": _units(""),
    "config_manager": _units("autoscale config discovery errors k8s metrics state xds"),
    "envoy_process": _units("children"),
    "front_end": _units("config director extproc metrics state xds"),  # own-Envoy mode's wiring
    "server": _units(
        "admin autoscale config config_manager config_watch director discovery epp errors "
        "extproc fence front_end k8s metrics sim state xds"
    ),
    "up": _units("config envoy_process server sim view xds"),
    "soak": _units("config envoy_process server sim xds"),
    "cli": _units("config errors server sim soak up view xds"),
    "__main__": _units("cli"),
}

PENDING: dict[tuple[str, str], str] = {}

ALLOWED_PROJECT = ("warmroute.state", "warmroute.errors")
CONFIG_THIRD_PARTY = {"pydantic", "pydantic_core", "yaml"}
FORBIDDEN_STDLIB = {"asyncio", "socket", "ssl", "subprocess", "threading", "http", "urllib"}


def _unit(module: str) -> str:
    """``warmroute.x.y`` -> ``x``; ``warmroute`` itself -> ``warmroute``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in the file (``from warmroute import x``
    counts as ``warmroute.x``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (house style: absolute)"
            if node.module == "warmroute":
                names += [f"warmroute.{a.name}" for a in node.names]
            elif node.module:
                names.append(node.module)
    return names


def _edges() -> Iterator[tuple[str, str, str]]:
    """(unit, imported unit, file) for every import between two different units."""
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _unit(_module_of(path))
        for name in _imports(path):
            if name == "warmroute" or name.startswith("warmroute."):
                dst = _unit(name)
                if dst != src:
                    yield src, dst, str(path.relative_to(PACKAGE))


def test_every_unit_has_a_place_in_the_table() -> None:
    units = {_unit(_module_of(path)) for path in PACKAGE.rglob("*.py")}
    assert units - LAYERS.keys() == set(), "place new units in LAYERS"
    assert LAYERS.keys() - units == set(), "drop units that no longer exist"
    assert {d for deps in LAYERS.values() for d in deps} <= LAYERS.keys()


def test_every_import_is_an_allowed_edge() -> None:
    problems = sorted(
        f"{file}: {src} may not import {dst}"
        for src, dst, file in _edges()
        if dst not in LAYERS.get(src, frozenset()) and (src, dst) not in PENDING
    )
    assert problems == []


def test_pending_edges_still_exist_and_are_forbidden() -> None:
    """Remove an entry from PENDING once its fix lands (and never add an allowed one)."""
    present = {(src, dst) for src, dst, _ in _edges()}
    assert [edge for edge in PENDING if edge not in present] == []
    assert [edge for edge in PENDING if edge[1] in LAYERS[edge[0]]] == []


def test_layers_are_one_way() -> None:
    """The table is acyclic: no two units may import each other, even through others."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in visiting, f"cycle: {' -> '.join((*path, unit))}"
        if unit in order:
            return
        visiting.add(unit)
        for dep in sorted(LAYERS[unit]):
            visit(dep, (*path, unit))
        visiting.discard(unit)
        order.append(unit)

    for unit in sorted(LAYERS):
        visit(unit, ())
    # The core imports no adapter, and nothing below the entry points imports them.
    assert LAYERS["state"] <= {"errors"}
    assert all(not (deps & _ENTRY) for unit, deps in LAYERS.items() if unit not in _ENTRY)


def test_state_core_imports_only_stdlib_and_itself() -> None:
    problems = []
    for path in sorted(STATE.rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith("warmroute"):
                ok = name.startswith(ALLOWED_PROJECT)
            else:
                ok = top in sys.stdlib_module_names and top not in FORBIDDEN_STDLIB
                ok = ok or top == "__future__"
            if not ok:
                problems.append(f"{path.name} imports {name}")
    assert problems == []


def test_the_front_ends_never_import_each_other() -> None:
    assert "extproc" not in LAYERS["epp"] and "epp" not in LAYERS["extproc"]
    crossing = [(src, dst, f) for src, dst, f in _edges() if {src, dst} == {"epp", "extproc"}]
    assert crossing == []


def test_the_director_speaks_no_protocol() -> None:
    """The director sees a ``Request`` value, never a gRPC or Envoy message."""
    protocols = ("grpc", "envoy", "google.protobuf", "xds", "udpa", "aiohttp", "kubernetes")
    problems = [
        f"{path.name} imports {name}"
        for path in sorted(DIRECTOR.rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in protocols or name.startswith(protocols)
    ]
    assert problems == []
    assert LAYERS["director"] <= {"errors", "metrics", "state"}


def test_config_imports_only_validation_libraries_the_core_and_itself() -> None:
    """The config is data: validated, then handed to the core as specs. Reading the file is
    its only I/O; no adapter, server or client library reaches it."""
    problems = []
    for path in sorted(CONFIG.glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith("warmroute"):
                ok = name.startswith(("warmroute.config.", *ALLOWED_PROJECT))
            else:
                ok = top in CONFIG_THIRD_PARTY or top == "__future__"
                ok = ok or (top in sys.stdlib_module_names and top not in FORBIDDEN_STDLIB)
            if not ok:
                problems.append(f"config/{path.name} imports {name}")
    assert problems == []


def test_config_private_modules_are_imported_only_inside_the_package() -> None:
    """Everyone else imports ``warmroute.config`` (its ``__all__``), so its modules can move."""
    root = PACKAGE.parent
    paths = [p for top in ("warmroute", "tests", "bench") for p in (root / top).rglob("*.py")]
    problems = sorted(
        f"{path.relative_to(root)} imports {name}"
        for path in paths
        if not path.is_relative_to(CONFIG)
        for name in _imports(path)
        if name.startswith("warmroute.config._")
    )
    assert problems == []
