#!/usr/bin/env bash
# System packages the project needs beyond the Python venv (Debian/Ubuntu, run as root; idempotent).
# - chromium: headless browser used by the evaluation report test (tests/test_eval_report.py) to check that
#   report.html renders with every image loaded, and to take a screenshot of it.
set -euo pipefail

PACKAGES=(chromium)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup-system: all present (${PACKAGES[*]})"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup-system: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup-system: installed ${missing[*]}"
