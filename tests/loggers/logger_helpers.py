"""A tiny module and data, and a run as rank 1 in a fresh interpreter, shared by the mlflow and wandb logger tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.trainer import LightningModule

REPO_ROOT = Path(__file__).resolve().parents[2]


class TinyModule(LightningModule):
    """A linear layer with MSE; logs train_loss every step; SGD at ``hparams.lr``."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def tiny_data() -> DataLoader:
    x = torch.rand(8, 4)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def run_as_rank_1(code: str, *, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) with ``python -c`` as RANK=1, without LOCAL_RANK, SLURM_PROCID and the ``unset``
    variables, the repository on PYTHONPATH; assert that it exited 0 (its stderr is the message) and return it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "SLURM_PROCID", *unset)}
    env.update(RANK="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result
