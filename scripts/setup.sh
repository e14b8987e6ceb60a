#!/usr/bin/env bash
# Create ./.venv with everything the project needs (idempotent, fast path with uv).
# A CPU machine whose pip configuration points at a local folder of wheels (PIP_FIND_LINKS) gets the CPU torch
# from there; elsewhere (a GPU image) the registry's default torch build is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.spf-installed"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi

if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install -q uv
fi
[ -x "$VENV/bin/python" ] || uv venv -q --python "$PY" "$VENV"
export VIRTUAL_ENV="$PWD/$VENV"

find_links=()
if [ -n "${PIP_FIND_LINKS:-}" ]; then
  for d in $PIP_FIND_LINKS; do find_links+=(--find-links "$d"); done
  # Prefer a local CPU torch wheel when the machine provides one (avoids several GB of CUDA wheels).
  wheel=$(ls ${PIP_FIND_LINKS%% *}/torch-*.whl 2>/dev/null | head -n1 || true)
  if [ -n "$wheel" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    uv pip install -q "$wheel"
  fi
fi
# compat mode: a plain path entry, so new subpackages need no reinstall
uv pip install -q "${find_links[@]}" --config-settings editable_mode=compat -e ".[dev]"
touch "$STAMP"
