#!/usr/bin/env bash
# One self-contained check of provision on a machine with an NVIDIA GPU (written for an H200).
#
#   bench/gpu-check.sh            run from anywhere; works in the repo root
#
# Steps, each with its own time limit; a failed step is recorded and the rest still run:
#   1. machine facts (nvidia-smi)
#   2. the tool: ./install.sh into .venv (or the repo on PYTHONPATH when PyPI is unreachable)
#   3. a chat env (torch with CUDA + transformers + accelerate + bitsandbytes): $CHAT_PYTHON, one
#      built earlier in .cache/gpu-check/, a python on PATH that has the stack, else `provision env create`,
#      else plain pip into a venv
#   4. `provision verify --json --env ...` (real NVML)
#   5. real 4-bit (nf4) load + generation of the committed tiny model, exact reply asserted
#   6. a real Qwen chat model when one is in the Hugging Face cache or can be downloaded
#      ($GPU_CHECK_MODEL, default Qwen/Qwen2.5-1.5B-Instruct), in nf4 and in float16
#   7. for each smoke run: peak GPU memory against `model fit`'s estimate, tokens/s against the
#      memory-bandwidth bound (NVML bus width x memory clock / weight bytes), where modules went
# Results: a summary on stdout; JSON files and a log in $OUT (or .cache/gpu-check/out). Budget ~8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK="$REPO/.cache/gpu-check"  # .cache/ is git-ignored
RESULTS="${OUT:-$WORK/out}"
mkdir -p "$WORK" "$RESULTS"
exec > >(tee -a "$RESULTS/gpu-check.log") 2>&1
MODEL="${GPU_CHECK_MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
TINY="$REPO/tests/fixtures/tiny-qwen2"
STACK_CHECK='import torch, transformers, accelerate, bitsandbytes; assert torch.cuda.is_available(), "torch sees no GPU"'
# GPU_CHECK_ALLOW_CPU=1 accepts a CPU torch: only to rehearse this script on a machine without a GPU.
[ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] && STACK_CHECK='import torch, transformers, accelerate, bitsandbytes'
declare -A STEP_STATUS

step() { echo; echo "== [$(date +%H:%M:%S) +${SECONDS}s] $*"; }
record() { STEP_STATUS["$1"]="$2"; echo "-- $1: $2"; }

# ---------------------------------------------------------------------------------------------
step "1. machine"
if timeout 60 nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1; then
  head -20 "$RESULTS/nvidia-smi.txt"
  record machine ok
else
  cat "$RESULTS/nvidia-smi.txt"
  record machine "nvidia-smi failed"
fi
python3 --version || true

# ---------------------------------------------------------------------------------------------
step "2. the tool"
TOOL=()
TOOL_PY=""
if timeout 240 ./install.sh; then
  TOOL_PY="$REPO/.venv/bin/python"
  TOOL=("$REPO/.venv/bin/provision")
  record tool "installed in .venv"
elif python3 -c 'import click, yaml, packaging' 2>/dev/null; then
  # No PyPI: the system python has the tool's own few dependencies, so run the checkout in place.
  TOOL_PY="$(command -v python3)"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  TOOL=("$TOOL_PY" -m provisioner)
  record tool "install.sh failed; running the checkout with the system python"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  record tool "unavailable (install.sh failed, no click/yaml here): CLI steps skipped"
fi
[ ${#TOOL[@]} -gt 0 ] && "${TOOL[@]}" --version

# ---------------------------------------------------------------------------------------------
step "3. chat environment"
CHAT_PY=""
has_stack() { [ -x "$1" ] && timeout 120 "$1" -c "$STACK_CHECK" >/dev/null 2>&1; }
for candidate in "${CHAT_PYTHON:-}" "$WORK/chat-env/bin/python" "$(command -v python3 || true)" \
                 "${CONDA_PREFIX:+$CONDA_PREFIX/bin/python}" /opt/conda/bin/python; do
  if [ -n "$candidate" ] && has_stack "$candidate"; then CHAT_PY="$candidate"; break; fi
done
if [ -z "$CHAT_PY" ] && [ ${#TOOL[@]} -gt 0 ]; then
  echo "no python with the stack; building one: provision env create --prefix $WORK/chat-env"
  timeout 420 "${TOOL[@]}" env create --prefix "$WORK/chat-env" --profile auto --backend venv
  has_stack "$WORK/chat-env/bin/python" && CHAT_PY="$WORK/chat-env/bin/python"
fi
if [ -z "$CHAT_PY" ] && [ $SECONDS -lt 240 ]; then
  echo "falling back to plain pip (PyPI's torch wheels for Linux are CUDA builds)"
  rm -rf "$WORK/chat-env"
  python3 -m venv --system-site-packages "$WORK/chat-env" &&
    timeout 400 "$WORK/chat-env/bin/python" -m pip install --quiet --disable-pip-version-check \
      torch transformers accelerate bitsandbytes
  has_stack "$WORK/chat-env/bin/python" && CHAT_PY="$WORK/chat-env/bin/python"
fi
if [ -n "$CHAT_PY" ]; then
  "$CHAT_PY" -c 'import torch, transformers, bitsandbytes as b; print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__, "| bitsandbytes", b.__version__, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
  CHAT_PREFIX="$(dirname "$(dirname "$CHAT_PY")")"
  record env "$CHAT_PY"
else
  CHAT_PREFIX=""
  record env "none: no python with torch (CUDA) + transformers + accelerate + bitsandbytes"
fi

# ---------------------------------------------------------------------------------------------
step "4. provision verify --json"
if [ ${#TOOL[@]} -gt 0 ]; then
  env_args=()
  [ -n "$CHAT_PREFIX" ] && env_args=(--env "$CHAT_PREFIX")
  timeout 180 "${TOOL[@]}" verify --json "${env_args[@]}" > "$RESULTS/verify.json"
  rc=$?
  "${TOOL_PY:-python3}" - "$RESULTS/verify.json" <<'EOF' || true
import json, sys
doc = json.load(open(sys.argv[1]))
for c in doc["checks"]:
    print(f"{c['status']:5} {c['id']:22} {c['message'].splitlines()[0][:110]}")
print("verify ok:", doc["ok"])
EOF
  record verify "exit $rc"
else
  record verify skipped
fi

# ---------------------------------------------------------------------------------------------
# The smoke runs and their verdicts: provision's own smoke module (stdlib only, so any python 3.10+
# with the repo on PYTHONPATH runs it), NVML for the bandwidth when pynvml is importable.
cat > "$WORK/smoke_report.py" <<'EOF'
"""Run one smoke chat through provision and print + save its verdicts with the GPU comparisons."""
import json, os, sys
from pathlib import Path
from provisioner.model import smoke
from provisioner.report import render_checks, to_document

python, model, quant, label, out_dir, prompt = sys.argv[1:7]
expect = sys.argv[7] if len(sys.argv) > 7 else None
environ = dict(os.environ)
bandwidth = None
gpu_name = None
try:
    import pynvml
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(h)
    mem_mhz = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
    bandwidth = 2 * mem_mhz * 1e6 * bus_bits / 8  # double data rate x clock x bus width in bytes
    gpu_name = pynvml.nvmlDeviceGetName(h)
except Exception as e:  # no pynvml or no driver: the bound is left out
    print(f"(no NVML bandwidth: {e})")
r = smoke.run_smoke(Path(python), model, quant=quant, max_new_tokens=64, environ=environ, prompt=prompt)
estimate = smoke.estimate_for(model, quant, environ, max_new_tokens=64)
checks = smoke.check_smoke(r, estimate_bytes=estimate, gpu_present=bandwidth is not None,
                           expect=expect, bandwidth_bytes_per_s=bandwidth)
print(render_checks(checks))
summary = {
    "label": label, "model": model, "quant": quant, "ok": r.ok, "reply": r.reply, "device": r.device,
    "gpu": gpu_name, "load_s": r.load_s, "ttft_s": r.ttft_s, "tokens_per_s": r.tokens_per_s,
    "decode_tokens_per_s": r.decode_tokens_per_s, "peak_bytes": r.peak_bytes,
    "footprint_bytes": r.footprint_bytes, "estimate_bytes": estimate,
    "peak_over_estimate": (r.peak_bytes / estimate) if (r.peak_bytes and estimate) else None,
    "bandwidth_bytes_per_s": bandwidth,
    "bandwidth_bound_tokens_per_s": (bandwidth / r.footprint_bytes) if (bandwidth and r.footprint_bytes) else None,
    "placement": dict(r.placement.get("modules_by_device", {})) if r.placement else None,
    "error": r.error,
}
if summary["bandwidth_bound_tokens_per_s"] and r.decode_tokens_per_s:
    summary["fraction_of_bound"] = r.decode_tokens_per_s / summary["bandwidth_bound_tokens_per_s"]
Path(out_dir, f"smoke-{label}.json").write_text(json.dumps(
    {"summary": summary, "checks": to_document(checks), "result": r.to_dict()}, indent=2, default=str))
print("SUMMARY " + json.dumps(summary, default=str))
sys.exit(0 if r.ok and all(c.status.value != "fail" for c in checks) else 1)
EOF
REPORT_PY="${TOOL_PY:-$CHAT_PY}"
smoke_run() {  # label model quant prompt [expected text in the reply]
  local label=$1 model=$2 quant=$3 prompt=$4 expect=("${@:5}")
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout 600 "$REPORT_PY" "$WORK/smoke_report.py" \
    "$CHAT_PY" "$model" "$quant" "$label" "$RESULTS" "$prompt" "${expect[@]}"
  record "smoke-$label" "exit $?"
}

step "5. tiny model, real nf4 load + generation"
if [ -n "$CHAT_PY" ]; then
  # The tiny model was trained on "Hello! How are you?"; the script asks it directly for the exact reply.
  timeout 300 "$CHAT_PY" provisioner/scripts/smoke_chat.py "$TINY" --quant nf4 --no-stream \
    > "$RESULTS/smoke-tiny-raw.json"
  "$CHAT_PY" - "$RESULTS/smoke-tiny-raw.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ok = d.get("ok") and d.get("reply") == "I am fine, thank you."
print("tiny nf4 reply:", repr(d.get("reply")), "| device", d.get("device"), "| placement",
      (d.get("placement") or {}).get("modules_by_device"), "| exact" if ok else "| WRONG", d.get("error") or "")
sys.exit(0 if ok else 1)
EOF
  record tiny-exact "exit $?"
  smoke_run tiny "$TINY" nf4 "Hello! How are you?" "I am fine, thank you."
else
  record tiny-exact "skipped (no chat env)"
fi

step "6. a real Qwen chat model: $MODEL"
MODEL_ARG=""
if [ -n "$CHAT_PY" ]; then
  if [ -d "$MODEL" ]; then
    MODEL_ARG="$MODEL"
  elif HF_HUB_OFFLINE=1 timeout 60 "$CHAT_PY" -c "from huggingface_hub import snapshot_download as s; s('$MODEL', allow_patterns=['*.json','*.safetensors','*.jinja','*.txt'])" >/dev/null 2>&1; then
    MODEL_ARG="$MODEL"; echo "found in the Hugging Face cache"
  elif [ $SECONDS -lt 330 ]; then
    echo "downloading (limit 180 s)"
    if [ ${#TOOL[@]} -gt 0 ] && timeout 180 "${TOOL[@]}" model download "$MODEL"; then
      MODEL_ARG="$MODEL"
    elif timeout 180 "$CHAT_PY" -c "from huggingface_hub import snapshot_download as s; s('$MODEL', allow_patterns=['*.json','*.safetensors','*.jinja','*.txt'])"; then
      MODEL_ARG="$MODEL"
    fi
  fi
fi
if [ -n "$MODEL_ARG" ]; then
  export HF_HUB_OFFLINE=1  # it is local now: no network during the timed runs
  QUESTION="What is the capital of France? Answer in one sentence."
  smoke_run qwen-nf4 "$MODEL_ARG" nf4 "$QUESTION" Paris
  [ $SECONDS -lt 480 ] && smoke_run qwen-fp16 "$MODEL_ARG" none "$QUESTION" Paris
  if [ ${#TOOL[@]} -gt 0 ]; then
    timeout 60 "${TOOL[@]}" model fit "$MODEL_ARG" --json > "$RESULTS/fit-qwen.json" && record fit "saved" || record fit "failed"
  fi
else
  record qwen "skipped: not local and not downloadable here"
fi

# ---------------------------------------------------------------------------------------------
step "summary (${SECONDS}s)"
for key in "${!STEP_STATUS[@]}"; do printf '  %-14s %s\n' "$key" "${STEP_STATUS[$key]}"; done | sort
"${REPORT_PY:-python3}" - "$RESULTS" <<'EOF' 2>/dev/null || true
import json, sys
from pathlib import Path
rows = []
for f in sorted(Path(sys.argv[1]).glob("smoke-*.json")):
    if f.name.endswith("-raw.json"):
        continue
    s = json.loads(f.read_text())["summary"]
    g = lambda k, d=1: ("-" if s.get(k) is None else f"{s[k] / d:.2f}")
    rows.append(f"  {s['label']:10} load {g('load_s')} s  ttft {g('ttft_s')} s  {g('decode_tokens_per_s')} tok/s"
                f"  bound {g('bandwidth_bound_tokens_per_s')} tok/s  peak {g('peak_bytes', 2**30)} GiB"
                f"  estimate {g('estimate_bytes', 2**30)} GiB  on {s.get('placement')}  reply {s.get('reply')!r:.60}")
print("\n".join(rows) or "  no smoke runs")
EOF
{
  echo "{"
  first=1
  for key in "${!STEP_STATUS[@]}"; do
    [ $first -eq 0 ] && echo ","
    first=0
    printf '  "%s": "%s"' "$key" "${STEP_STATUS[$key]//\"/\'}"
  done
  printf '\n}\n'
} > "$RESULTS/steps.json"
echo "results in $RESULTS (${SECONDS}s)"
