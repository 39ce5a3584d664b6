#!/usr/bin/env bash
# Lightning itself, for the benchmarks that measure fabric_lite against it (never imported by fabric_lite or its tests).
# Installed once, without dependencies, into a folder outside the project venv, so it cannot change the venv's torch:
# its own dependencies (fsspec, torchmetrics, PyYAML, tqdm, packaging) are already in the test extras.
# Usage (sourced after scripts/_venv.sh): source scripts/_lightning_ref.sh  -> sets $LIGHTNING_REF (a folder for PYTHONPATH).
set -euo pipefail
LIGHTNING_REF="${LIGHTNING_REF:-$HOME/.cache/fabric_lite/lightning-ref-2.6.6}"
if ! PYTHONPATH="$LIGHTNING_REF" "$PY" -c "import lightning" >/dev/null 2>&1; then
  echo "[setup] installing lightning==2.6.6 (reference for benchmarks) into $LIGHTNING_REF"
  rm -rf "$LIGHTNING_REF"
  "$PY" -m pip install -q --no-deps --target "$LIGHTNING_REF" "lightning==2.6.6" "lightning-utilities==0.15.3" 2>&1 | grep -v "^WARNING: Location" || true
fi
export LIGHTNING_REF
