#!/usr/bin/env bash
# Install what the benchmarks need on top of warmroute's own .venv:
#   Python: bench/requirements.txt (matplotlib, celery[redis] with its redis client, requests)
#   System: redis-server (Celery's broker) and wrk (saturation load), via apt if missing.
# Usage: bash bench/setup.sh        (from anywhere; needs root or sudo for apt)
#        PYTHON=/path/to/venv/bin/python bash bench/setup.sh   (another environment)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-$root/.venv/bin/python}"

if [[ ! -x "$python" ]]; then
    echo "no $python: run scripts/test.sh (or scripts/demo.sh) once to create it" >&2
    exit 1
fi
"$python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v wrk >/dev/null || missing+=(wrk)
if (( ${#missing[@]} )); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "apt-get install ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
"$python" -c 'import celery, matplotlib, redis
print("bench setup ok: matplotlib", matplotlib.__version__, "celery", celery.__version__,
      "redis-py", redis.__version__)'
echo "$(redis-server --version | cut -d' ' -f1-3), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
