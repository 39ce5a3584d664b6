"""examples/digits_trainer.py end to end on 2 processes started by fabric-run, as scripts/demo.sh runs it."""

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


def test_digits_trainer_on_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "2", "examples/digits_trainer.py",
         "--epochs", "3", "--root-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env,
    )
    match = FINAL.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) > 0.85
    assert proc.returncode == (0 if match.group(2) == "PASSED" else 1)
    assert proc.stdout.count("final validation accuracy") == 1  # printed by rank 0 only
    assert len(re.findall(r"^Epoch \d: 12 batches", proc.stdout, re.MULTILINE)) == 4  # 1437 samples / 2 ranks / 64 per batch
    assert list(tmp_path.rglob("epoch=*-val_acc=*.ckpt")) and list(tmp_path.rglob("metrics.csv"))
