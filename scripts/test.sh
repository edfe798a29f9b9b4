#!/usr/bin/env bash
# Install, then run every check CI runs: lint, format, strict types, and all test tiers
# (unit, integration with real gRPC, end-to-end with the real Envoy binary, and bench: a
# seconds-long smoke run of every benchmark scenario; `-m "not bench"` leaves it out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The benchmarks' extras (matplotlib, Celery, redis-server, wrk), so tests/bench smoke-runs
# every contender; if they cannot be installed, those runs leave the contenders that need
# them out and a skipped test says which.
bash bench/setup.sh || echo "bench/setup.sh failed: tests/bench will leave Celery/wrk out" >&2
. .venv/bin/activate
echo "== ruff"; ruff check warmroute tests bench; ruff format --check warmroute tests bench
echo "== mypy (strict)"; mypy
echo "== pytest"; pytest -q -p no:cacheprovider "$@"
