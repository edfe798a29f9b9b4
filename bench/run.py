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

Needs the bench extras: ``bash bench/setup.sh`` (matplotlib, Celery, redis-server, wrk).
Progress goes to stderr; the results page is printed when done. Everything listens and
sends on 127.0.0.1 only; every child process is stopped by its own pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENARIOS = (
    "quality", "overhead", "dispatch", "coldstart", "predictive", "config", "body", "converge",
    "prefix",
)  # fmt: skip
# Scenarios that live outside bench/scenarios/.
MODULES = {"converge": "bench.converge"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.contenders import NAMES

    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--quick", action="store_true", help="fewer requests: about 1-2 minutes")
    parser.add_argument("--seed", type=int, default=1, help="trace seed (default 1)")
    parser.add_argument(
        "--contenders",
        type=lambda s: [n for n in s.split(",") if n],
        default=None,
        help=f"quality only: a comma list out of {','.join(NAMES)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    from bench.converge import add_arguments as converge_arguments

    converge_arguments(parser)
    args = parser.parse_args(argv)
    for name in args.contenders or ():
        if name not in NAMES:
            parser.error(f"unknown contender {name!r}; expected one of {', '.join(NAMES)}")
    return args


NEEDS = {
    "quality": ("celery", "redis-server"),
    "overhead": ("wrk",),
    "dispatch": ("celery", "redis-server"),
    "coldstart": (),
    "predictive": (),
    "config": (),
    "body": (),
    "converge": (),
    "prefix": (),
}


def missing(scenario: str) -> list[str]:
    """What this scenario needs that is not installed (see bench/setup.sh)."""
    import importlib.util
    import shutil

    out = []
    for need in (*NEEDS[scenario], "matplotlib", "envoy"):
        if need in ("celery", "matplotlib"):
            if importlib.util.find_spec(need) is None:
                out.append(f"Python package {need}")
        elif shutil.which(need) is None:
            out.append(f"command {need}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if lacking := missing(args.scenario):
        print(
            f"bench: {args.scenario} needs {', '.join(lacking)}: run `bash bench/setup.sh`",
            file=sys.stderr,
        )
        return 2
    from bench import report

    scenario = importlib.import_module(
        MODULES.get(args.scenario, f"bench.scenarios.{args.scenario}")
    )
    report.begin()
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
