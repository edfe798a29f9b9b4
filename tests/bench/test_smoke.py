"""Every scenario of ``bench/run.py`` runs, in seconds (``--smoke``), as a user runs it;
so do bench's other tools (the micro-benchmarks in ``bench/micro/``), with tiny arguments.

A benchmark nobody runs breaks silently (the dispatch scenario did: a wrapped method's
signature changed). Each test runs ``python bench/run.py SCENARIO --smoke`` as a separate
process with the virtual environment *not* activated (its bin directory off PATH), so
Envoy must be found beside the interpreter, and checks the page it wrote. The numbers of
a smoke run mean nothing and are not checked; the scenarios check their own wiring (e.g.
dispatch fails if its control-plane stamps stop covering the requests).

Contenders whose tools are missing (Celery and redis-server, wrk: ``bash bench/setup.sh``,
which ``scripts/test.sh`` runs) are left out by ``--smoke`` with the reason on the page;
``test_every_contender_can_run_here`` is then skipped, saying which.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import NEEDS, SCENARIOS, lacking, left_out, main

ROOT = Path(__file__).resolve().parents[2]

# What each scenario's page must show beyond the smoke-run header: its sections and every
# contender (or variant) that ran.
PAGES: dict[str, tuple[str, ...]] = {
    "quality": ("| envoy-rr |", "| envoy-lr |", "| warmroute |", "| ideal (M/G/c) |"),
    "overhead": ("## Added latency at fixed rates", "## Saturation (wrk)", "## Targets"),
    "dispatch": ("| warmroute |", "## Where warmroute's gap goes"),
    "coldstart": ("## Every repetition", "| warmroute |", "| poll 1.5 s |"),
    "predictive": ("predictive", "every_wait", "no scaling"),
    "config": ("## Building and serializing EDS", "| sotw |", "| delta |"),
    "body": ("plain Envoy", "B json_to_metadata", "A ext_proc BUFFERED"),
    "converge": ("converge",),
    "prefix": ("least_loaded", "prefix_affinity", "session (tenant header)"),
    "restart": ("| no metrics |", "over slots"),
}


def _venv_not_activated(tmp: Path | None = None) -> dict[str, str]:
    """This environment as a shell that never sourced ``.venv/bin/activate`` has it; with
    ``tmp``, the run's temporary files (its children's logs) go there."""
    env = dict(os.environ)
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and os.path.abspath(p) != bindir
    )
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_scenario_runs(scenario: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    kept = ROOT / "bench" / "results" / f"{scenario}.md"
    before = kept.stat().st_mtime_ns if kept.exists() else None
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), scenario, "--smoke", "--out", str(out)],
        cwd=tmp_path, env=_venv_not_activated(tmp_path), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    log = proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "Traceback" not in proc.stderr, log
    page = (out / f"{scenario}.md").read_text()
    assert "`--smoke`: tiny sizes" in page
    for part, why in left_out(scenario).items():
        assert f"| left out: {part} | {why} |" in page
    missing = [marker for marker in PAGES.get(scenario, ()) if marker not in page]
    assert not missing, f"{missing} not on the page:\n{page}"
    assert (kept.stat().st_mtime_ns if kept.exists() else None) == before  # never overwritten


# bench's tools outside run.py, each with its smallest useful arguments ("{out}": a
# temporary directory); each must exit 0 and print what it measured.
TOOLS: dict[str, tuple[list[str], str]] = {
    "epp": (["micro/epp.py", "--requests", "10", "--clients", "2", "--rounds", "1",
             "--sizes", "1000", "--out", "{out}/epp.md"], "| epp |"),
    "extproc": (["micro/extproc.py", "--seconds", "0.5", "--warmup", "0.1", "--rate", "200"],
                '"errors": 0'),
    "xds_scale": (["micro/xds_scale.py", "--replicas", "100", "--clients", "3", "--rounds",
                   "1"], "| 3 | 100 |"),
    "affinity": (["micro/affinity.py", "affinity", "200"], "ns"),
}  # fmt: skip


@pytest.mark.parametrize("tool", TOOLS)
def test_the_tool_runs(tool: str, tmp_path: Path) -> None:
    args, shown = TOOLS[tool]
    argv = [a.replace("{out}", str(tmp_path)) for a in args]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:]],
        cwd=tmp_path, env=_venv_not_activated(tmp_path), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert shown in proc.stdout, proc.stdout[-4000:]


def test_every_scenario_has_page_markers() -> None:
    assert set(PAGES) == set(SCENARIOS) == set(NEEDS)


def test_every_contender_can_run_here() -> None:
    """Says (as a skip) what the smoke runs above had to leave out on this machine."""
    absent = {f"{s}: {part}": why for s in SCENARIOS for part, why in left_out(s).items()}
    if absent:
        pytest.skip("smoke runs left out " + "; ".join(f"{k} ({v})" for k, v in absent.items()))


def test_a_full_run_refuses_to_start_without_its_tools(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("bench.run.lacking", lambda tools: [f"command {t}" for t in tools])
    assert main(["dispatch", "--quick"]) == 2
    assert "run `bash bench/setup.sh`" in capsys.readouterr().err


def test_envoy_is_found_beside_the_interpreter_without_an_activated_venv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", _venv_not_activated()["PATH"])
    assert lacking(("envoy",)) == []


def test_smoke_leaves_out_what_is_missing_and_the_pages_say_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.scenarios.overhead_report import saturation_section

    monkeypatch.setattr("bench.run.lacking", lambda tools: [f"command {t}" for t in tools])
    assert left_out("dispatch") == {
        "celery": "not installed: command celery, command redis-server (`bash bench/setup.sh`)"
    }
    assert set(left_out("overhead")) == {"wrk"}
    assert left_out("coldstart") == {}
    assert "Not measured in this run: wrk was left out" in "\n".join(saturation_section(None, None))
