"""The state core stays pure: no I/O, gRPC, Kubernetes, metrics or servers inside it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

STATE = Path(__file__).resolve().parents[2] / "warmroute" / "state"
ALLOWED_PROJECT = ("warmroute.state", "warmroute.errors")
FORBIDDEN_STDLIB = {"asyncio", "socket", "ssl", "subprocess", "threading", "http", "urllib"}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_state_core_imports_only_stdlib_and_itself() -> None:
    problems = []
    for path in sorted(STATE.glob("*.py")):
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
