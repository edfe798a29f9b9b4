#!/usr/bin/env bash
# Install, then run the demo: 4 simulated GPU replicas, the control plane and a real Envoy.
# Extra arguments go to `warmroute up` (e.g. -c my.yaml, --duration 30, -q).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/warmroute up "$@"
