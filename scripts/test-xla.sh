#!/usr/bin/env bash
# Run the tests marked `xla` on XLA's CPU device (PJRT_DEVICE=CPU) in a venv of their own.
#
# torch_xla 2.9 needs exactly torch 2.9, while the project's .venv has a newer torch: scripts/_xla_venv.sh
# creates (first time, ~7 GB) or reuses that venv outside the clone, by default ~/.cache/fabric_lite/xla-venv
# (FABRIC_LITE_XLA_VENV overrides it), and installs fabric_lite into it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_xla_venv.sh
export PJRT_DEVICE=CPU
exec "$PY" -m pytest -q -p no:cacheprovider -m xla tests/xla "$@"
