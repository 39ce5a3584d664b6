#!/usr/bin/env bash
# Create or reuse the second venv (torch 2.9 + torch_xla 2.9) and install this clone into it; sets $PY.
# Sourced by scripts/test-xla.sh (the XLA tests) and scripts/test-floor.sh (the lowest torch we declare).
#
# torch_xla 2.9 needs exactly torch 2.9, while the project's .venv has a newer torch, so the venv lives
# OUTSIDE the clone, by default ~/.cache/fabric_lite/xla-venv (FABRIC_LITE_XLA_VENV overrides it); the
# first time it takes ~7 GB (PyPI's torch 2.9.0 is the CUDA build with its nvidia-* wheels). fabric_lite
# is installed editable with --no-deps, so no other torch is pulled. Stamp files record what was
# installed, so a second run starts the tests at once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FABRIC_LITE_XLA_VENV:-$HOME/.cache/fabric_lite/xla-venv}"
TORCH_VERSION="${FABRIC_LITE_XLA_TORCH_VERSION:-2.9.0}"
PACKAGES="torch==$TORCH_VERSION torch_xla==$TORCH_VERSION pytest>=8 pytest-timeout>=2.3 numpy"
PY="$VENV/bin/python"

STAMP="$VENV/.fabric_lite-xla-packages"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$PACKAGES" ]; then
  started=$(date +%s)
  echo "[xla-venv] creating $VENV with $PACKAGES (first time: several GB, a few minutes)"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
  # shellcheck disable=SC2086  # the package list is meant to split into words
  "$PY" -m pip install -q $PACKAGES 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import torch, torch_xla; print('[xla-venv] torch', torch.__version__, 'torch_xla', torch_xla.__version__)" \
    || { echo "[xla-venv] installing torch_xla failed (see pip's output above)" >&2; exit 1; }
  echo "$PACKAGES" > "$STAMP"
  echo "[xla-venv] ready in $(( $(date +%s) - started )) s, $(du -sh "$VENV" | cut -f1)"
fi

# fabric_lite itself: re-installed only when this clone's path or its metadata changed.
PROJECT_STAMP="$VENV/.fabric_lite-xla-project"
META="$ROOT $(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$PROJECT_STAMP" ] || [ "$(cat "$PROJECT_STAMP")" != "$META" ]; then
  # the distribution was called fabric-lite before (the name of another PyPI project): an old editable
  # install of it would still map `fabric_lite` to whichever clone installed it
  if "$PY" -m pip show -q fabric-lite >/dev/null 2>&1; then "$PY" -m pip uninstall -q -y fabric-lite; fi
  echo "[xla-venv] installing torch-fabric-lite from $ROOT (editable, --no-deps)"
  "$PY" -m pip install -q --no-deps -e "$ROOT" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import fabric_lite" || { echo "[xla-venv] installing fabric_lite failed" >&2; exit 1; }
  echo "$META" > "$PROJECT_STAMP"
fi
export PY
