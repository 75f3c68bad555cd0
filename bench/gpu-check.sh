#!/usr/bin/env bash
# One self-contained check of provision on a machine with an NVIDIA GPU (written for an H200 that reaches
# nothing outside itself: no hub, no package index).
#
#   bench/gpu-check.sh --prepare  where the package index answers: fetch the bitsandbytes wheel to carry
#   bench/gpu-check.sh            on the GPU machine (from anywhere; it works in the repo root)
#
# Steps, each with its own time limit; a failed step is recorded and the rest still run:
#   1. machine facts: nvidia-smi, NVML (name, driver, memory, bus width x memory clock = bandwidth)
#   2. the tool: an existing .venv/bin/provision; else ./install.sh when the package index answers; else the
#      checkout run in place by a python that has the tool's own dependencies
#   3. a chat env (torch with CUDA + transformers + accelerate + bitsandbytes): $CHAT_PYTHON, one built earlier
#      in .cache/gpu-check/, a python on PATH that has the stack; a python with all but bitsandbytes gets it
#      from wheels in $GPU_CHECK_WHEELS (default .cache/gpu-check/wheels, carried there); online only:
#      `provision env create`, else plain pip into a venv
#   4. `provision verify --json --env ...` (real NVML)
#   5. real 4-bit (nf4) load + generation of the committed tiny model, its exact reply asserted
#   6. a Qwen model of real size: $GPU_CHECK_MODEL (a folder or hub id) when it is local (a folder or in the
#      Hugging Face cache; downloaded only with GPU_CHECK_DOWNLOAD=1 and a reachable hub); else one BUILT here
#      by bench/make_qwen_shaped.py: the exact shape of $GPU_CHECK_SHAPE from provision's Qwen table (default
#      Qwen/Qwen2.5-7B-Instruct on a GPU of 24 GiB or more, Qwen2.5-1.5B below, Qwen2.5-0.5B without a GPU),
#      random bf16 weights, the tiny fixture's tokenizer. Then `provision model fit DIR`, the nf4 smoke run,
#      bench/calibrate_fit.py (one nf4 load, prompts of several lengths), and the float16 smoke run (GPU only)
#   7. summary (bench/gpu_check_summary.py): per smoke run peak GPU memory against `model fit`'s estimate and
#      decode tokens/s against the bandwidth bound (bandwidth / bytes one token reads); the calibration of
#      fit's activation and CUDA-context terms
# GPU_CHECK_ALLOW_CPU=1 rehearses all of it on a CPU torch (GPU-only figures are skipped, fp16 run left out).
# GPU_CHECK_NEW_TOKENS (default 64 on a GPU, 16 on the CPU), GPU_CHECK_CONTEXTS (calibration prompt lengths,
# default 256,2048,8192 on a GPU, 32,128 on the CPU), GPU_CHECK_OFFLINE=1|0 (skip or force the network steps),
# GPU_CHECK_BUDGET_S (default 420: a long step starts only with 60 s of it left and is cut off 30 s after it).
# Results: the log in $OUT/gpu-check.log (or .cache/gpu-check/out), every file in .cache/gpu-check/out, and
# with $OUT set also $OUT/results.tar.gz (two files come back). The 7B shape on an H200: build + 3 loads.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK="$REPO/.cache/gpu-check"  # .cache/ is git-ignored
# bitsandbytes for a GPU machine that has torch, transformers and accelerate but no index: the test suite's
# pin (bench/_common.py), as a manylinux x86-64 wheel (it holds the CPU, CUDA 11.8 to 13.2 and ROCm libraries).
BNB_PIN="${GPU_CHECK_BNB:-bitsandbytes==0.50.2}"
case "${1:-}" in
  --prepare)
    # Run where the index is reachable, before the GPU machine: the wheel lands in $WORK/wheels, which the
    # device tool carries (carry: .cache/gpu-check/wheels; about 43 MB).
    mkdir -p "$WORK/wheels"
    exec python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version "${GPU_CHECK_PYVER:-3.12}" --implementation cp --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$WORK/wheels" "$BNB_PIN" ;;
  -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  "") ;;
  *) echo "gpu-check.sh: unknown option '$1' (use --prepare or --help)" >&2; exit 2 ;;
esac
RESULTS="$WORK/out"
LOGDIR="${OUT:-$RESULTS}"
rm -rf "$RESULTS"
mkdir -p "$WORK" "$RESULTS" "$LOGDIR"
exec > >(tee -a "$LOGDIR/gpu-check.log") 2>&1
TINY="$REPO/tests/fixtures/tiny-qwen2"
WHEELS="${GPU_CHECK_WHEELS:-$WORK/wheels}"
ALLOW_CPU="${GPU_CHECK_ALLOW_CPU:-0}"
STACK_CHECK='import torch, transformers, accelerate, bitsandbytes; assert torch.cuda.is_available(), "torch sees no GPU"'
# GPU_CHECK_ALLOW_CPU=1 accepts a CPU torch: only to rehearse this script on a machine without a GPU.
[ "$ALLOW_CPU" = 1 ] && STACK_CHECK='import torch, transformers, accelerate, bitsandbytes'
export PYTHONUNBUFFERED=1
declare -A STEP_STATUS

# Every long step starts only when the budget leaves it room, and is cut off at the budget (+30 s grace),
# so the whole script ends by about BUDGET + 60 s (the summary included).
BUDGET="${GPU_CHECK_BUDGET_S:-420}"
room() { echo $(( BUDGET - SECONDS )); }
limit() { local r=$(( BUDGET - SECONDS + 30 )); [ "$r" -lt 1 ] && r=1; [ "$r" -lt "$1" ] && echo "$r" || echo "$1"; }  # min(want, room+30)
step() { echo; echo "== [$(date +%H:%M:%S) +${SECONDS}s] $*"; }
record() { STEP_STATUS["$1"]="$2"; echo "-- $1: $2"; }
SYS_PY="$(command -v python3 || true)"

# ---------------------------------------------------------------------------------------------
step "1. machine"
GPU_TOTAL_GIB=0
if timeout 60 nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1; then
  head -20 "$RESULTS/nvidia-smi.txt"
  record machine ok
else
  cat "$RESULTS/nvidia-smi.txt"
  record machine "nvidia-smi failed"
fi
"${SYS_PY:-python3}" --version || true
# NVML facts straight from the driver (nvidia-ml-py); {"error": ...} without it.
timeout 60 "${SYS_PY:-python3}" - "$RESULTS/nvml.json" <<'EOF' || true
import json, sys
facts = {}
try:
    import pynvml as n
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    text = lambda v: v.decode() if isinstance(v, bytes) else v
    mem = n.nvmlDeviceGetMemoryInfo(h)
    bus = n.nvmlDeviceGetMemoryBusWidth(h)
    mclk = n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)
    facts = {"name": text(n.nvmlDeviceGetName(h)), "driver": text(n.nvmlSystemGetDriverVersion()),
             "count": n.nvmlDeviceGetCount(), "memory_total_bytes": int(mem.total), "memory_used_bytes": int(mem.used),
             "bus_width_bits": bus, "max_memory_clock_mhz": mclk, "bandwidth_bytes_per_s": 2 * mclk * 1e6 * bus / 8,
             "max_sm_clock_mhz": n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)}
    for key, call in (("compute_capability", lambda: "%d.%d" % n.nvmlDeviceGetCudaComputeCapability(h)),
                      ("power_limit_w", lambda: n.nvmlDeviceGetPowerManagementLimit(h) / 1000),
                      ("cuda_driver_version", lambda: n.nvmlSystemGetCudaDriverVersion())):
        try:
            facts[key] = call()
        except Exception as e:  # a field this driver or sandbox does not answer
            facts[key] = None
except Exception as e:
    facts = {"error": f"{type(e).__name__}: {e}"}
open(sys.argv[1], "w").write(json.dumps(facts, indent=2) + "\n")
print("NVML", json.dumps(facts))
EOF
GPU_TOTAL_GIB=$("${SYS_PY:-python3}" -c 'import json,sys; print(int(json.load(open(sys.argv[1])).get("memory_total_bytes", 0) / 2**30))' \
  "$RESULTS/nvml.json" 2>/dev/null || echo 0)

# Is the package index reachable? pip --isolated asks its default index (no host is named here), leaving
# out configured find-links folders that answer without a network. A sandbox without network fails at once;
# GPU_CHECK_OFFLINE=1 or 0 skips the question.
if [ -n "${GPU_CHECK_OFFLINE:-}" ]; then
  ONLINE=$([ "$GPU_CHECK_OFFLINE" = 1 ] && echo 0 || echo 1)
elif timeout 20 "${SYS_PY:-python3}" -m pip --isolated index versions pip --retries 0 --timeout 5 >/dev/null 2>&1; then
  ONLINE=1
else
  ONLINE=0
fi
echo "package index reachable: $([ "$ONLINE" = 1 ] && echo yes || echo no)"

# ---------------------------------------------------------------------------------------------
step "2. the tool"
TOOL=()
TOOL_PY=""
if [ -x "$REPO/.venv/bin/provision" ] && timeout 60 "$REPO/.venv/bin/provision" --version >/dev/null 2>&1; then
  TOOL_PY="$REPO/.venv/bin/python"
  TOOL=("$REPO/.venv/bin/provision")
  record tool "the existing .venv"
elif [ "$ONLINE" = 1 ] && PIP_RETRIES=1 PIP_TIMEOUT=15 timeout 240 ./install.sh; then
  TOOL_PY="$REPO/.venv/bin/python"
  TOOL=("$REPO/.venv/bin/provision")
  record tool "installed in .venv"
elif [ -n "$SYS_PY" ] && "$SYS_PY" -c 'import click, yaml, packaging, rich' 2>/dev/null; then
  # No index: this python has the tool's own few dependencies, so run the checkout in place.
  TOOL_PY="$SYS_PY"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  TOOL=("$TOOL_PY" -m provisioner)
  record tool "the checkout run by $SYS_PY (no install)"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  record tool "unavailable (no .venv, no index for install.sh, no click/yaml/rich here): CLI steps skipped"
fi
[ ${#TOOL[@]} -gt 0 ] && "${TOOL[@]}" --version

# ---------------------------------------------------------------------------------------------
step "3. chat environment"
CHAT_PY=""
has_stack() { [ -x "$1" ] && timeout 120 "$1" -c "$STACK_CHECK" >/dev/null 2>&1; }
CANDIDATES=("${CHAT_PYTHON:-}" "$WORK/chat-env/bin/python" "$SYS_PY"
            "${CONDA_PREFIX:+$CONDA_PREFIX/bin/python}" "${CONDA_EXE:+$(dirname "$(dirname "$CONDA_EXE")")/bin/python}")
for candidate in "${CANDIDATES[@]}"; do
  if [ -n "$candidate" ] && has_stack "$candidate"; then CHAT_PY="$candidate"; break; fi
done
if [ -z "$CHAT_PY" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  # The stack but bitsandbytes (the H200 image has torch, transformers and accelerate): install the
  # carried wheels into a folder of their own, without an index, and put it on PYTHONPATH.
  for candidate in "${CANDIDATES[@]}"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    timeout 120 "$candidate" -c "${STACK_CHECK/, bitsandbytes/}" >/dev/null 2>&1 || continue
    echo "$candidate has torch + transformers + accelerate; installing $(ls "$WHEELS" | tr '\n' ' ')into $WORK/site"
    rm -rf "$WORK/site"
    timeout 180 "$candidate" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$WORK/site" "$WHEELS"/*.whl ||
      for w in "$WHEELS"/*.whl; do "$candidate" -m zipfile -e "$w" "$WORK/site"; done
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    if has_stack "$candidate"; then CHAT_PY="$candidate"; break; fi
  done
fi
if [ -z "$CHAT_PY" ] && [ "$ONLINE" = 1 ] && [ ${#TOOL[@]} -gt 0 ]; then
  echo "no python with the stack; building one: provision env create --prefix $WORK/chat-env"
  timeout 420 "${TOOL[@]}" env create --prefix "$WORK/chat-env" --profile auto --backend venv
  has_stack "$WORK/chat-env/bin/python" && CHAT_PY="$WORK/chat-env/bin/python"
fi
if [ -z "$CHAT_PY" ] && [ "$ONLINE" = 1 ] && [ $SECONDS -lt 240 ]; then
  echo "falling back to plain pip (the index's torch wheels for Linux are CUDA builds)"
  rm -rf "$WORK/chat-env"
  python3 -m venv --system-site-packages "$WORK/chat-env" &&
    timeout 400 "$WORK/chat-env/bin/python" -m pip install --quiet --disable-pip-version-check \
      torch transformers accelerate bitsandbytes
  has_stack "$WORK/chat-env/bin/python" && CHAT_PY="$WORK/chat-env/bin/python"
fi
ON_GPU=0
if [ -n "$CHAT_PY" ]; then
  "$CHAT_PY" -c 'import sys, torch, transformers, bitsandbytes as b; gpu = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__, "| bitsandbytes", b.__version__, "from", b.__file__, "|", torch.cuda.get_device_name(0) if gpu else "no GPU"); sys.exit(0 if gpu else 3)'
  [ $? = 0 ] && ON_GPU=1
  CHAT_PREFIX="$(dirname "$(dirname "$CHAT_PY")")"
  record env "$CHAT_PY$([ "$ON_GPU" = 1 ] || echo ' (CPU rehearsal: no CUDA)')"
else
  CHAT_PREFIX=""
  record env "none: no python with torch (CUDA) + transformers + accelerate + bitsandbytes"
fi
if [ "$ON_GPU" = 1 ] && [ "$GPU_TOTAL_GIB" = 0 ]; then  # no NVML in the system python: ask torch
  GPU_TOTAL_GIB=$("$CHAT_PY" -c 'import torch; print(torch.cuda.get_device_properties(0).total_memory >> 30)' 2>/dev/null || echo 0)
fi
NEW_TOKENS="${GPU_CHECK_NEW_TOKENS:-$([ "$ON_GPU" = 1 ] && echo 64 || echo 16)}"
CONTEXTS="${GPU_CHECK_CONTEXTS:-$([ "$ON_GPU" = 1 ] && echo 256,2048,8192 || echo 32,128)}"

# ---------------------------------------------------------------------------------------------
step "4. provision verify --json"
if [ ${#TOOL[@]} -gt 0 ]; then
  env_args=()
  [ -n "$CHAT_PREFIX" ] && env_args=(--env "$CHAT_PREFIX")
  timeout 120 "${TOOL[@]}" verify --json "${env_args[@]}" > "$RESULTS/verify.json"
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
# The smoke runs and their verdicts: bench/gpu_check_smoke.py runs provision's smoke chat in the chat env
# and keeps its whole JSON (stdlib + the tool's own dependencies, so the tool's python runs it).
REPORT_PY="${TOOL_PY:-$CHAT_PY}"
smoke_run() {  # label model quant prompt [--expect TEXT [--exact] | --any-reply]
  local label=$1 model=$2 quant=$3 prompt=$4 lim
  shift 4
  lim=$(limit 300)
  if [ "$lim" -lt 60 ]; then record "smoke-$label" "skipped: out of time (${SECONDS}s of ${BUDGET}s)"; return; fi
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout $((lim + 10)) "$REPORT_PY" "$REPO/bench/gpu_check_smoke.py" \
    --python "$CHAT_PY" --model "$model" --quant "$quant" --label "$label" --out-dir "$RESULTS" \
    --prompt "$prompt" --max-new-tokens "$NEW_TOKENS" --timeout "$lim" "$@"
  record "smoke-$label" "exit $?"
}

step "5. tiny model, real nf4 load + generation"
if [ -n "$CHAT_PY" ]; then
  # The tiny model was trained on "Hello! How are you?": its greedy reply is known to the letter.
  smoke_run tiny "$TINY" nf4 "Hello! How are you?" --expect "I am fine, thank you." --exact
else
  record smoke-tiny "skipped (no chat env)"
fi

# ---------------------------------------------------------------------------------------------
if [ -n "${GPU_CHECK_SHAPE:-}" ]; then SHAPE="$GPU_CHECK_SHAPE"
elif [ "$ON_GPU" = 1 ] && [ "$GPU_TOTAL_GIB" -ge 24 ]; then SHAPE=Qwen/Qwen2.5-7B-Instruct
elif [ "$ON_GPU" = 1 ]; then SHAPE=Qwen/Qwen2.5-1.5B-Instruct
else SHAPE=Qwen/Qwen2.5-0.5B-Instruct
fi
MODEL="${GPU_CHECK_MODEL:-$SHAPE}"
step "6. a Qwen model of real size: $MODEL"
MODEL_ARG=""
SHAPED=0
HUB_GET="from huggingface_hub import snapshot_download as s; s('$MODEL', allow_patterns=['*.json','*.safetensors','*.jinja','*.txt'])"
if [ -n "$CHAT_PY" ]; then
  if [ -d "$MODEL" ]; then
    MODEL_ARG="$MODEL"; echo "a local folder"
  elif HF_HUB_OFFLINE=1 timeout 60 "$CHAT_PY" -c "$HUB_GET" >/dev/null 2>&1; then
    MODEL_ARG="$MODEL"; echo "found in the Hugging Face cache"
  elif [ "${GPU_CHECK_DOWNLOAD:-0}" = 1 ] && [ "$ONLINE" = 1 ] && [ $SECONDS -lt 330 ]; then
    echo "downloading (limit 180 s)"
    if [ ${#TOOL[@]} -gt 0 ] && timeout 180 "${TOOL[@]}" model download "$MODEL"; then
      MODEL_ARG="$MODEL"
    elif timeout 180 "$CHAT_PY" -c "$HUB_GET"; then
      MODEL_ARG="$MODEL"
    fi
  fi
  if [ -z "$MODEL_ARG" ] && [ "$(room)" -lt 60 ]; then
    record shaped "skipped: out of time (${SECONDS}s of ${BUDGET}s)"
  elif [ -z "$MODEL_ARG" ]; then
    SHAPED_DIR="$WORK/shaped-$(basename "$SHAPE" | tr 'A-Z' 'a-z')"
    echo "no checkpoint of $MODEL here: building $SHAPE's exact shape with random weights in $SHAPED_DIR"
    if timeout "$(limit 300)" "$CHAT_PY" bench/make_qwen_shaped.py "$SHAPED_DIR" --shape "$SHAPE" \
         > "$RESULTS/shaped.out" 2> "$RESULTS/shaped.stderr"; then
      tail -1 "$RESULTS/shaped.out" > "$RESULTS/shaped.json"
      cat "$RESULTS/shaped.json"
      MODEL_ARG="$SHAPED_DIR"; SHAPED=1
      record shaped "built $SHAPE"
    else
      tail -15 "$RESULTS/shaped.stderr"
      record shaped "failed to build $SHAPE"
    fi
  fi
fi
if [ -n "$MODEL_ARG" ]; then
  export HF_HUB_OFFLINE=1  # it is local now: no network during the timed runs
  if [ ${#TOOL[@]} -gt 0 ]; then
    timeout 60 "${TOOL[@]}" model fit "$MODEL_ARG" --json > "$RESULTS/fit-qwen.json" && record fit "saved" || record fit "failed"
  fi
  QUESTION="What is the capital of France? Answer in one sentence."
  if [ "$SHAPED" = 1 ]; then judge=(--any-reply); else judge=(--expect Paris); fi
  smoke_run qwen-nf4 "$MODEL_ARG" nf4 "$QUESTION" "${judge[@]}"
  if [ "$(room)" -ge 60 ]; then
    timeout "$(limit 240)" "$CHAT_PY" bench/calibrate_fit.py "$MODEL_ARG" --quant nf4 --contexts "$CONTEXTS" \
      --out "$RESULTS/calibrate-nf4.json" 2> "$RESULTS/calibrate-nf4.stderr"
    rc=$?
    grep '^context' "$RESULTS/calibrate-nf4.stderr" || tail -5 "$RESULTS/calibrate-nf4.stderr"
    record calibrate "exit $rc"
  else
    record calibrate "skipped: out of time (${SECONDS}s of ${BUDGET}s)"
  fi
  if [ "$ON_GPU" != 1 ]; then
    record smoke-qwen-fp16 "skipped: CPU rehearsal (no float16 on the CPU path)"
  else
    smoke_run qwen-fp16 "$MODEL_ARG" none "$QUESTION" "${judge[@]}"
  fi
else
  record qwen "skipped: no model to run (see the env and shaped lines)"
fi

# ---------------------------------------------------------------------------------------------
step "summary (${SECONDS}s)"
for key in "${!STEP_STATUS[@]}"; do printf '  %-16s %s\n' "$key" "${STEP_STATUS[$key]}"; done | sort
if [ -n "$REPORT_PY" ]; then
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout 120 "$REPORT_PY" "$REPO/bench/gpu_check_summary.py" "$RESULTS" ||
    echo "(the summary failed)"
fi
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
if [ "$LOGDIR" != "$RESULTS" ]; then
  tar -czf "$LOGDIR/results.tar.gz" -C "$WORK" out && echo "results: $LOGDIR/results.tar.gz"
fi
echo "results in $RESULTS (${SECONDS}s)"
