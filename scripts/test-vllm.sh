#!/usr/bin/env bash
# The real-vLLM tier (tests/vllm): install warmroute, set up a real vLLM (its CPU build, a
# tiny random Llama made locally, LoRA adapters; ~3.5 GB, 3-6 minutes the first time) in
# $WARMROUTE_VLLM_DIR (default: .vllm/ here), then run the tier: two vLLM replicas, warmroute
# and a real Envoy in front of them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export WARMROUTE_VLLM_DIR="${WARMROUTE_VLLM_DIR:-$PWD/.vllm}"
[ -x "$WARMROUTE_VLLM_DIR/serve.sh" ] || bash scripts/vllm/setup.sh "$WARMROUTE_VLLM_DIR"
. .venv/bin/activate
pytest -q -p no:cacheprovider -m vllm tests/vllm "$@"
