#!/usr/bin/env bash
# Wall time of `provision verify --env ENV` (no smoke chat) next to `ENV/bin/python -m torch.utils.collect_env`
# in the same environment, the ratio, and where verify's time goes.
#
# usage: bench/verify_vs_collect_env.sh [ENV_PREFIX] [RUNS]
#   ENV_PREFIX  an environment with torch (default: the test suite's chat env under .cache/tests)
#   RUNS        timed runs of each command; the median is reported (default 5)
# PROVISION (default: the repo's .venv/bin/provision) and PYTHON (default: the repo's .venv/bin/python)
# may be overridden.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
env_prefix=${1:-$(ls -d "$here"/.cache/tests/chat-env-* 2>/dev/null | head -n1)}
runs=${2:-5}
provision=${PROVISION:-$here/.venv/bin/provision}
python=${PYTHON:-$here/.venv/bin/python}
if [ -z "$env_prefix" ] || [ ! -x "$env_prefix/bin/python" ]; then
  echo "error: no environment with bin/python given (and no .cache/tests/chat-env-* to default to)" >&2
  echo "hint: bench/verify_vs_collect_env.sh /path/to/env   (run the test suite once to build the chat env)" >&2
  exit 2
fi

"$python" - "$provision" "$env_prefix" "$runs" <<'PY'
import json, statistics, subprocess, sys, time

provision, prefix, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
env_python = f"{prefix}/bin/python"

def wall(args):
    t = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    return time.perf_counter() - t, done

def median(args, n):
    wall(args)  # one warm-up run: page cache and .pyc files, as a user's second run sees them
    times = [wall(args)[0] for _ in range(n)]
    return statistics.median(times), min(times), max(times)

verify = [provision, "verify", "--env", prefix]
collect = [env_python, "-m", "torch.utils.collect_env"]
v_med, v_min, v_max = median(verify, runs)
c_med, c_min, c_max = median(collect, runs)
h_med, _, _ = median([provision, "--help"], runs)

# Where verify's time goes, from the timings its checks carry in --json (one run, timed as a whole).
total, done = wall(verify + ["--json"])
checks = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
nvml = checks["driver"]["data"].get("seconds") or 0.0
probe_wall = checks["env.python"]["data"].get("probe_wall_seconds") or 0.0
probe = checks["env.python"]["data"].get("probe_seconds") or 0.0
torch_import = checks["env.torch"]["data"].get("import_seconds") or 0.0
bnb = checks["env.bitsandbytes"]["data"]
bnb_import = bnb.get("import_seconds") or 0.0
matmul = (bnb.get("matmul") or {}).get("seconds") or 0.0

print(f"environment: {prefix}  ({runs} runs each after a warm-up; median [min-max])")
print(f"provision verify --env ENV             {v_med:6.2f} s  [{v_min:.2f}-{v_max:.2f}]")
print(f"python -m torch.utils.collect_env      {c_med:6.2f} s  [{c_min:.2f}-{c_max:.2f}]")
print(f"ratio verify / collect_env             {v_med / c_med:6.2f}")
print()
print(f"where verify's time goes (one --json run, {total:.2f} s):")
print(f"  provision start-up (median of --help)  {h_med:6.2f} s")
print(f"  NVML query (subprocess)                {nvml:6.2f} s")
print(f"  env probe (subprocess, wall)           {probe_wall:6.2f} s")
print(f"    interpreter start + JSON             {probe_wall - probe:6.2f} s")
print(f"    import torch                         {torch_import:6.2f} s")
print(f"    import bitsandbytes                  {bnb_import:6.2f} s")
print(f"    4-bit NF4 quantize + matmul          {matmul:6.2f} s")
print(f"    the rest (metadata, CUDA queries)    {probe - torch_import - bnb_import - matmul:6.2f} s")
print(f"  toolkit/profile checks, rendering      {total - h_med - nvml - probe_wall:6.2f} s")
PY
