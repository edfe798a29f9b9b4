"""bench's layout as a table, checked over every module's imports with ``ast`` (as
``tests/unit/test_layering.py`` does for warmroute).

    bench/lib/        code the scenarios and micro-benchmarks share; imports only bench.lib
    bench/micro/      single-component measurements, each a script; import bench.lib
    bench/scenarios/  run.py's scenarios; import bench.lib, bench.micro and their own modules
    bench/run.py      the entry point; finds a scenario by name (importlib)

A scenario is one module (``bench/scenarios/NAME.py``, with ``run(args)``) or a family:
``NAME.py`` runs it, ``NAME_plan.py`` says what is measured and holds the results' shapes,
``NAME_report.py`` writes the page. A module imports only its own family, and no module
imports back one that imports it: the whole import graph of bench/ has no cycle. Lazy
imports count (they couple the code just the same).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from bench.run import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

# Which parts of bench each part may import (itself only where listed: a micro-benchmark
# imports no other).
LAYERS: dict[str, frozenset[str]] = {
    "lib": frozenset({"lib"}),
    "micro": frozenset({"lib"}),
    "scenarios": frozenset({"lib", "micro", "scenarios"}),
    "entry": frozenset({"lib", "scenarios"}),
}
FAMILY_PARTS = ("plan", "report")  # NAME_plan, NAME_report beside NAME
NOT_MODULES = {"bench.infer": "the Celery task's name (bench/lib/contenders/celery_app.py)"}


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


MODULES = {_module_of(p): p for p in sorted(BENCH.rglob("*.py"))}


def _part(module: str) -> str:
    """``bench.lib.x`` -> ``lib``; ``bench.run`` and ``bench`` itself -> ``entry``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "entry"


def _imports(path: Path) -> list[str]:
    """bench modules imported anywhere in the file: ``from bench.lib import report`` counts
    as ``bench.lib.report``, ``from bench.lib.util import say`` as ``bench.lib.util``."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (house style: absolute)"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.append(full if full in MODULES else str(node.module))
    return [n for n in names if n == "bench" or n.startswith("bench.")]


GRAPH: dict[str, set[str]] = {m: set(_imports(p)) - {m} for m, p in MODULES.items()}


def _family(module: str) -> tuple[str, str] | None:
    """The scenario a ``bench.scenarios`` module belongs to and its role in it (``run``,
    ``plan`` or ``report``); None for the package itself."""
    name = module.removeprefix("bench.scenarios").lstrip(".")
    if not name:
        return None
    for part in FAMILY_PARTS:
        if name.endswith(f"_{part}") and name.removesuffix(f"_{part}") in SCENARIOS:
            return name.removesuffix(f"_{part}"), part
    return name, "run"


def _scenario(module: str) -> str | None:
    family = _family(module)
    return family[0] if family else None


def _edges() -> Iterator[tuple[str, str]]:
    for src, dsts in sorted(GRAPH.items()):
        for dst in sorted(dsts):
            yield src, dst


def test_every_import_names_a_bench_module() -> None:
    unknown = sorted(f"{src} imports {dst}" for src, dst in _edges() if dst not in MODULES)
    assert unknown == []


def test_every_import_follows_the_layers() -> None:
    problems = sorted(
        f"{src} ({_part(src)}) may not import {dst} ({_part(dst)})"
        for src, dst in _edges()
        if _part(dst) not in LAYERS[_part(src)]
    )
    assert problems == []


def test_lib_never_imports_scenarios_or_micro() -> None:
    """Said again on its own, as issue 18 asks: the shared code depends on no measurement."""
    lib = [m for m in MODULES if _part(m) == "lib"]
    assert lib, "bench/lib is gone?"
    assert [(m, d) for m in lib for d in GRAPH[m] if _part(d) in ("scenarios", "micro")] == []


def test_a_scenario_imports_only_its_own_modules() -> None:
    problems = sorted(
        f"{src} imports {dst}, another scenario's module: move what both need to bench/lib"
        for src, dst in _edges()
        if _part(src) == _part(dst) == "scenarios" and _scenario(src) != _scenario(dst)
    )
    assert problems == []


def test_every_scenario_has_its_module_and_every_module_a_scenario() -> None:
    families = {_scenario(m) for m in MODULES if _part(m) == "scenarios"} - {None}
    assert families == set(SCENARIOS)
    for name in SCENARIOS:
        tree = ast.parse((BENCH / "scenarios" / f"{name}.py").read_text())
        runs = [n for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "run"]
        assert runs, f"bench/scenarios/{name}.py has no `async def run(args)` for run.py"


def test_there_is_no_import_cycle() -> None:
    """Depth-first over the whole graph; the first cycle found is shown in full."""
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in sorted(GRAPH.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in MODULES:
        visit(module, ())


def test_a_plan_or_report_does_not_import_the_scenario_back() -> None:
    """``NAME`` imports ``NAME_plan`` and ``NAME_report``, never the other way round; a page
    (``NAME_report``) reads the plan, never the reverse."""
    rank = {"plan": 0, "report": 1, "run": 2}  # a module imports only lower ranks
    problems = []
    for src, dst in _edges():
        a, b = _family(src), _family(dst)
        if a and b and a[0] == b[0] and rank[b[1]] >= rank[a[1]]:
            problems.append(f"{src} ({a[1]}) imports {dst} ({b[1]})")
    assert problems == []


def test_module_paths_in_strings_exist() -> None:
    """Child processes are started by module path (``python -m bench.lib.serve``, Celery's
    ``-A bench.lib.contenders.celery_app``): a string naming a bench module must name one
    that exists, or a move breaks a child only at run time."""
    stale = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text, parts = node.value, node.value.split(".")
                named = parts[0] == "bench" and len(parts) > 1 and text not in NOT_MODULES
                if named and all(p.isidentifier() for p in parts) and text not in MODULES:
                    stale.append(f"{module}: {text!r}")  # (an f-string's prefix ends in ".")
    assert stale == []
