"""examples/digits.py end to end: a real subprocess per run, as a user would start it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn", reason="examples/digits.py needs scikit-learn: pip install -e '.[examples]'")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "digits.py"
FINAL_LINE = re.compile(r"^final validation accuracy: (\d\.\d{3}) \(target > 0\.90: (PASSED|FAILED)\)$", re.M)
EPOCHS = "5"  # reaches about 0.96 on the fixed split; the default (10) is for the demo


def run_digits(*args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the example on CPU (the same on every machine) and return the process and its final accuracy."""
    # One intra-op thread: this model is tiny, and several threads slow down badly when other tests
    # (or other processes) share the cores.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--accelerator", "cpu", "--epochs", EPOCHS, *args],
        capture_output=True, text=True, timeout=timeout, cwd=SCRIPT.parents[1], env=env,
    )
    match = FINAL_LINE.search(proc.stdout)
    assert match, f"no final line (exit code {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, float(match.group(1))


def test_digits_passes_in_fp32() -> None:
    proc, accuracy = run_digits()
    assert proc.returncode == 0, proc.stderr
    assert "(target > 0.90: PASSED)" in proc.stdout
    assert accuracy > 0.90
    assert proc.stdout.count("val acc") == int(EPOCHS)


def test_digits_bf16_mixed() -> None:
    proc, accuracy = run_digits("--precision", "bf16-mixed")
    assert accuracy > 0.85, proc.stdout
    assert proc.returncode == (0 if accuracy > 0.90 else 1)


def test_digits_checkpoint_and_csv_log(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt" / "digits.ckpt"
    proc, _ = run_digits("--checkpoint", str(checkpoint), "--log-dir", str(tmp_path / "logs"))
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=True)
    assert set(state["model"]) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert state["model"]["0.weight"].shape == (128, 64)
    assert {"state", "param_groups"} <= set(state["optimizer"])
    assert state["epoch"] == int(EPOCHS)
    (metrics,) = (tmp_path / "logs").rglob("metrics.csv")
    rows = metrics.read_text().strip().splitlines()
    assert rows[0].split(",")[:1] == ["step"] and {"train_loss", "val_acc"} <= set(rows[0].split(","))
    assert len(rows) == 1 + int(EPOCHS)


def test_digits_exits_nonzero_below_target() -> None:
    proc, accuracy = run_digits("--epochs", "1", "--lr", "1e-6")  # the last --epochs wins
    assert accuracy < 0.90
    assert "(target > 0.90: FAILED)" in proc.stdout
    assert proc.returncode == 1


def test_digits_on_two_processes_matches_the_target_and_prints_once() -> None:
    proc, accuracy = run_digits("--devices", "2", timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert accuracy > 0.90
    # fabric.print prints on local rank 0 only: one line per epoch, not two
    assert proc.stdout.count("val acc") == int(EPOCHS)


def test_demo_script_runs_two_processes() -> None:
    root = SCRIPT.parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(root / "scripts" / "demo.sh"), "--epochs", EPOCHS], capture_output=True,
                          text=True, timeout=300, cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo passed: examples/digits.py trained on 2 process(es)" in proc.stdout
