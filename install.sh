#!/usr/bin/env bash
# Set up provision on this machine: a virtualenv for the tool in ./.venv, `provision` inside it.
#   ./install.sh          the tool
#   ./install.sh --test   the tool plus its test dependencies
# Safe to re-run: an existing .venv is reused and only missing packages are installed.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (use --test or --help)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "install.sh: provision needs Python >= 3.10; set PYTHON=/path/to/python3.x" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
echo "provision installed: $(.venv/bin/provision --version)"
echo "run it as .venv/bin/provision (or add $(pwd)/.venv/bin to PATH)"
