"""Lightning's own Fabric examples (image classifier, k-fold cross-validation), reduced to scikit-learn's digits and
with ``lightning.fabric`` renamed to ``fabric_lite`` as the only code change, run as Lightning documents them:
``fabric run --accelerator cpu --devices 2 script.py`` (two real DDP processes through torch.distributed.run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the reduced examples read scikit-learn's digits: pip install -e '.[examples]'")
pytest.importorskip("torchmetrics", reason="Lightning's examples use torchmetrics: pip install -e '.[metrics]'")

EXAMPLES = Path(__file__).resolve().parent / "lightning_fabric"
FABRIC = Path(sys.executable).parent / "fabric"  # the console script, as `fabric` in Lightning's docs


def fabric_run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_LITE_")}
    result = subprocess.run([str(FABRIC), "run", "--accelerator", "cpu", "--devices", "2", str(EXAMPLES / script), *args],
                            capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_the_only_change_from_lightnings_scripts_is_the_import():
    for script in ("image_classifier.py", "kfold_cv.py"):
        text = (EXAMPLES / script).read_text()
        assert "lightning" not in text.replace("lightning.fabric", "").replace("Lightning", "")
        assert re.search(r"^from fabric_lite import Fabric", text, re.M) and "seed_everything(hparams.seed)" in text


def test_image_classifier_trains_on_two_processes(tmp_path):
    result = fabric_run("image_classifier.py", "--epochs", "3", cwd=tmp_path)
    tests = re.findall(r"Test set: Average loss: (\d+\.\d+), Accuracy: \((\d+)%\)", result.stdout)
    assert len(tests) == 2 * 3, result.stdout  # each rank prints (the example uses print, not fabric.print)
    # both ranks agree: the loss is summed with all_gather, the accuracy synced by torchmetrics across the processes
    assert tests[0::2] == tests[1::2]
    losses, accuracies = [float(l) for l, _ in tests[0::2]], [int(a) for _, a in tests[0::2]]
    assert losses[-1] < losses[0] and accuracies[-1] >= 75, tests
    # each rank trains on its half of the 1437 training images: 12 batches of 64, the 10th logged
    assert re.search(r"Train Epoch: 3 \[576/1437 \(75%\)\]", result.stdout)


def test_kfold_cross_validation_trains_five_models_on_two_processes(tmp_path):
    result = fabric_run("kfold_cv.py", "--epochs", "2", cwd=tmp_path)
    folds = re.findall(r"For fold: (\d) Validation set: Average loss: \d+\.\d+, Accuracy: \((\d+)%\)", result.stdout)
    assert len(folds) == 2 * 5 * 2, result.stdout  # 2 ranks x 5 folds x 2 epochs
    epochs = re.findall(r"Epoch (\d) - Average acc: (\d+\.\d+)", result.stdout)
    assert [e for e, _ in epochs] == ["1", "1", "2", "2"]
    first, last = float(epochs[0][1]), float(epochs[-1][1])
    assert epochs[0][1] == epochs[1][1] and epochs[2][1] == epochs[3][1]  # the ranks agree
    assert last > first and last >= 60, epochs
