#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install fabric_lite (editable) with the given extras.
# Usage (sourced): source scripts/_venv.sh "test,examples,tensorboard"   -> sets $PY to the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-examples}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  # absent, or left half-made by an interrupted set-up (no pip yet): make it anew
  echo "[setup] creating $VENV"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch first and pinned: a bare 'torch>=2.4' from an empty venv would pull a multi-GB CUDA build,
# while 2.13.0 (CPU) is the wheel this project is developed and tested with.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==${FABRIC_LITE_TORCH_VERSION:-2.13.0}"
  "$PY" -m pip install -q "torch==${FABRIC_LITE_TORCH_VERSION:-2.13.0}"
fi
# Re-install only when the project metadata changed or an extra is asked for that is not installed yet.
STAMP="$VENV/.fabric_lite-installed"
META="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
HAVE_META=""; HAVE_EXTRAS=""
if [ -f "$STAMP" ]; then read -r HAVE_META HAVE_EXTRAS < "$STAMP" || true; fi
MISSING=0
for extra in ${EXTRAS//,/ }; do
  case ",$HAVE_EXTRAS," in *",$extra,"*) ;; *) MISSING=1 ;; esac
done
if [ "$HAVE_META" != "$META" ] || [ "$MISSING" = 1 ]; then
  ALL="$(printf '%s\n' ${EXTRAS//,/ } ${HAVE_EXTRAS//,/ } | sort -u | paste -sd, -)"
  [ "$HAVE_META" = "$META" ] || ALL="$EXTRAS"
  echo "[setup] installing torch-fabric-lite[$ALL] (editable)"
  "$PY" -m pip install -q -e "$ROOT[$ALL]" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import fabric_lite" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$META $ALL" > "$STAMP"
fi
export PY
