#!/usr/bin/env bash
# Set up .venv (created or reused) and train examples/digits.py on 2 CPU processes (DDP over gloo,
# started by fabric-run through torch.distributed.run), then examples/digits_trainer.py (the same model
# run by fabric_lite.trainer.Trainer); each exits non-zero below 90% accuracy.
# Extra arguments go to the script, e.g. scripts/demo.sh --precision bf16-mixed --checkpoint out/digits.ckpt
# FABRIC_LITE_DEMO_DEVICES=1 runs one process instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "examples,tensorboard"
DEVICES="${FABRIC_LITE_DEMO_DEVICES:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # 2 processes on a small machine: no thread oversubscription
"$PY" -m fabric_lite.cli --accelerator cpu --devices "$DEVICES" examples/digits.py "$@"
echo "demo passed: examples/digits.py trained on $DEVICES process(es) with fabric_lite and cleared the 90% validation target"
# The same classifier as LightningModule + LightningDataModule + Trainer (fabric_lite.trainer), on the same processes.
"$PY" -m fabric_lite.cli --accelerator cpu --devices "$DEVICES" examples/digits_trainer.py --root-dir out/digits_trainer
echo "demo passed: examples/digits_trainer.py (Trainer) trained on $DEVICES process(es) and cleared the 90% validation target"
