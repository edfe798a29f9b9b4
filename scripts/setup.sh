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
# The tests run curl exactly as OpenAI's docs show it; a bare Debian image may lack it.
if [ "$extra" = "test" ] && ! command -v curl >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq curl) >/dev/null
fi
