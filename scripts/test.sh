#!/usr/bin/env bash
# Install, then run every check CI runs: lint, format, strict types, and all test tiers
# (unit, integration with real gRPC, end-to-end with the real Envoy binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
echo "== ruff"; ruff check warmroute tests; ruff format --check warmroute tests
echo "== mypy (strict)"; mypy
echo "== pytest"; pytest -q -p no:cacheprovider "$@"
