#!/usr/bin/env bash
# Create .venv (if missing) and install warmroute with its pinned dependencies.
# Usage: scripts/setup.sh [extra]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extra=${1:-}
spec="."
[ -n "$extra" ] && spec=".[$extra]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
