"""examples/digits_trainer.py end to end in a subprocess (scripts/demo.sh runs it on 2 processes: tests/examples)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="examples/digits_trainer.py needs scikit-learn: pip install -e '.[examples]'")

ROOT = Path(__file__).resolve().parents[2]
FINAL = re.compile(r"^final validation accuracy: (\d\.\d{3}) \(target > 0\.90: (PASSED|FAILED)\)$", re.MULTILINE)


def test_digits_trainer_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "examples/digits_trainer.py", "--accelerator", "cpu", "--devices", "1", "--epochs", "3",
         "--root-dir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=240, cwd=ROOT, env=env,
    )
    match = FINAL.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert match.group(2) == "PASSED" and float(match.group(1)) > 0.90 and proc.returncode == 0, proc.stdout + proc.stderr
    assert len(re.findall(r"^Epoch \d: 23 batches", proc.stdout, re.MULTILINE)) == 3  # 1437 samples / 64 per batch
    assert list(tmp_path.rglob("epoch=*-val_acc=*.ckpt")) and list(tmp_path.rglob("events.out.tfevents*"))  # the default logger: TensorBoard
