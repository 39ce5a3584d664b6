#!/usr/bin/env bash
# Run the tests marked `xla` on XLA's CPU device (PJRT_DEVICE=CPU) in a venv of their own.
#
# torch_xla 2.9 needs exactly torch 2.9, while the project's .venv has a newer torch, so this
# script creates (first time, ~7 GB: PyPI's torch 2.9.0 is the CUDA build with its nvidia-* wheels)
# or reuses a separate venv OUTSIDE the clone, by default ~/.cache/fabric_lite/xla-venv
# (FABRIC_LITE_XLA_VENV overrides it), installs fabric_lite into it (editable, no dependencies,
# so no other torch is pulled) and runs pytest -m xla on tests/xla. Extra arguments go to pytest.
# A stamp file records what was installed, so a second run starts the tests at once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${FABRIC_LITE_XLA_VENV:-$HOME/.cache/fabric_lite/xla-venv}"
TORCH_VERSION="${FABRIC_LITE_XLA_TORCH_VERSION:-2.9.0}"
PACKAGES="torch==$TORCH_VERSION torch_xla==$TORCH_VERSION pytest>=8 pytest-timeout>=2.3 numpy"
PY="$VENV/bin/python"

STAMP="$VENV/.fabric_lite-xla-packages"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$PACKAGES" ]; then
  started=$(date +%s)
  echo "[xla] creating $VENV with $PACKAGES (first time: several GB, a few minutes)"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
  # shellcheck disable=SC2086  # the package list is meant to split into words
  "$PY" -m pip install -q $PACKAGES 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import torch, torch_xla; print('[xla] torch', torch.__version__, 'torch_xla', torch_xla.__version__)" \
    || { echo "[xla] installing torch_xla failed (see pip's output above)" >&2; exit 1; }
  echo "$PACKAGES" > "$STAMP"
  echo "[xla] venv ready in $(( $(date +%s) - started )) s, $(du -sh "$VENV" | cut -f1)"
fi

# fabric_lite itself: re-installed only when this clone's path or its metadata changed.
PROJECT_STAMP="$VENV/.fabric_lite-xla-project"
META="$ROOT $(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$PROJECT_STAMP" ] || [ "$(cat "$PROJECT_STAMP")" != "$META" ]; then
  echo "[xla] installing fabric_lite from $ROOT (editable, --no-deps)"
  "$PY" -m pip install -q --no-deps -e "$ROOT" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import fabric_lite" || { echo "[xla] installing fabric_lite failed" >&2; exit 1; }
  echo "$META" > "$PROJECT_STAMP"
fi

export PJRT_DEVICE=CPU
exec "$PY" -m pytest -q -p no:cacheprovider -m xla tests/xla "$@"
