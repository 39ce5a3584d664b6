#!/usr/bin/env bash
# Set up .venv (created or reused) and train examples/digits.py; it exits non-zero below 90% accuracy.
# Extra arguments go to the script, e.g. scripts/demo.sh --precision bf16-mixed --checkpoint out/digits.ckpt
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "examples,tensorboard"
"$PY" examples/digits.py "$@"
echo "demo passed: examples/digits.py trained with fabric_lite and cleared the 90% validation target"
