"""The Trainer's default logger (logger=True or not given): TensorBoard when it can be written, else CSV.

Real fits on CPU; TensorBoard's event files are read back with TensorBoard's own EventAccumulator. The CSV case runs
in a child process where tensorboardX and tensorboard are blocked by a meta-path finder (as if not installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.loggers import TensorBoardLogger, default_logger
from fabric_lite.trainer import LightningModule, Trainer

REPO_ROOT = Path(__file__).resolve().parents[2]


class ImageLogger(LightningModule):
    """Logs its loss with self.log and a picture with self.logger.experiment.add_image, as Lightning examples do."""

    def __init__(self, images: bool = True) -> None:
        super().__init__()
        self.images = images
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        if self.images:
            self.logger.experiment.add_image("inputs", x[:1].reshape(1, 2, 2).clamp(0, 1), self.global_step)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data() -> DataLoader:
    x = torch.rand(8, 4)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def fit_with_default_logger(root: Path, images: bool = True, **logger_flag) -> Trainer:
    trainer = Trainer(accelerator="cpu", devices=1, default_root_dir=str(root), max_epochs=1, log_every_n_steps=1,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, **logger_flag)
    trainer.fit(ImageLogger(images), data())
    return trainer


@pytest.mark.parametrize("logger_flag", [{}, {"logger": True}], ids=["not-given", "True"])
def test_default_logger_is_tensorboard_and_add_image_works(tmp_path: Path, logger_flag: dict) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    trainer = fit_with_default_logger(tmp_path, **logger_flag)
    version_dir = tmp_path / "lightning_logs" / "version_0"
    assert isinstance(trainer.logger, TensorBoardLogger)
    assert trainer.log_dir == trainer.logger.log_dir == str(version_dir)

    events = event_accumulator.EventAccumulator(str(version_dir))
    events.Reload()
    assert [(image.step, image.width, image.height) for image in events.Images("inputs")] == [(0, 2, 2), (1, 2, 2)]
    steps = [event.step for event in events.Scalars("train_loss")]  # one per batch (the step numbering is the loop's)
    assert len(steps) == 2 and steps[1] == steps[0] + 1


def test_default_logger_function_picks_tensorboard_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = default_logger(tmp_path)
    assert isinstance(logger, TensorBoardLogger) and logger.log_dir == str(tmp_path / "lightning_logs" / "version_0")


def test_default_logger_is_csv_without_tensorboard(tmp_path: Path) -> None:
    code = f"""
        import logging, sys
        class BlockTensorBoard:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorboardX", "tensorboard"):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None
        sys.meta_path.insert(0, BlockTensorBoard())
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_default_logger import fit_with_default_logger
        trainer = fit_with_default_logger(Path({str(tmp_path)!r}), images=False)
        print("LOGGER", type(trainer.logger).__name__, trainer.log_dir)
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    version_dir = tmp_path / "lightning_logs" / "version_0"
    assert f"LOGGER CSVLogger {version_dir}" in result.stdout
    assert ("The default logger is CSVLogger because neither tensorboard nor tensorboardX is installed; for "
            "TensorBoard logs (and logger.experiment.add_image) pip install 'torch-fabric-lite[tensorboard]'") \
        in result.stderr
    header = (version_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train_loss" in header
