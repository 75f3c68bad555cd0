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

# Debian packages the test suite drives for real (only with --test, only as root on apt systems;
# elsewhere the tests that need one say what is missing and skip). One name per line.
TEST_DEBIAN_PACKAGES=(
  openssh-server
  chromium
)
if [ -n "$extras" ] && [ "${#TEST_DEBIAN_PACKAGES[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${TEST_DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install.sh: installing Debian packages for the tests: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
echo "provision installed: $(.venv/bin/provision --version)"
echo "run it as .venv/bin/provision (or add $(pwd)/.venv/bin to PATH)"
