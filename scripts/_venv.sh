#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install fabric_lite (editable) with the given extras.
# Usage (sourced): source scripts/_venv.sh "test,examples,tensorboard"   -> sets $PY to the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-examples}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch first and pinned: a bare 'torch>=2.4' from an empty venv would pull a multi-GB CUDA build,
# while 2.13.0 (CPU) is the wheel this project is developed and tested with.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==${FABRIC_LITE_TORCH_VERSION:-2.13.0}"
  "$PY" -m pip install -q "torch==${FABRIC_LITE_TORCH_VERSION:-2.13.0}"
fi
# Re-install only when the project metadata or the extras changed.
STAMP="$VENV/.fabric_lite-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing fabric-lite[$EXTRAS] (editable)"
  "$PY" -m pip install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import fabric_lite" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PY
