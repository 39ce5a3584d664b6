#!/usr/bin/env bash
# Set up .venv (created or reused) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "test,examples,tensorboard"
# Lightning itself, outside the venv, for the smoke tests of the benchmarks that compare against it (seconds, once).
source scripts/_lightning_ref.sh
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/fabric_lite/torch_extensions}"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
