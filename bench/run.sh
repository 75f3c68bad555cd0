#!/usr/bin/env bash
# Every benchmark of issue 10 in one run, then one table: provision next to the tool a user would
# otherwise run, as medians and ratios. Nothing here is a test: it prints, it asserts nothing.
#   bench/run.sh [--quick] [--env PREFIX]
# --quick: fewer rounds (3 instead of 7; the help timing 9 instead of 21).
# --env PREFIX: the torch environment to measure verify/smoke chat in (default: the test suite's
#   chat env, else one built once under the XDG cache dir; see bench/_common.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
rounds=7; help_runs=21; env_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) rounds=3; help_runs=9 ;;
    --env) env_args=(--env "$2"); shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
run() { echo "== $*" >&2; "$@" | tee -a "$out" >&2; }
run "$PY" bench/help_time.py "$help_runs"
run "$PY" bench/verify_time.py -n "$rounds" "${env_args[@]}"
run "$PY" bench/smoke_time.py -n "$rounds" "${env_args[@]}"
run "$PY" bench/env_pip_vs_uv.py
echo
printf '%-52s %10s %10s %8s %8s\n' "measure (provision vs anchor)" "provision" "anchor" "ratio" "target"
grep '^RESULT' "$out" | while IFS=$'\t' read -r _ what mine theirs ratio target; do
  printf '%-52s %9ss %9ss %7sx %8s\n' "$what" "$mine" "$theirs" "$ratio" "$target"
done
