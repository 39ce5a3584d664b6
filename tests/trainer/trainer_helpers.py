"""Tiny modules, data and a hook recorder shared by the trainer tests (real runs, a few batches each)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.trainer import LightningModule, Trainer
from fabric_lite.trainer.callbacks import Callback


def regression_data(n: int = 32, features: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x @ torch.arange(1.0, features + 1).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader(n: int = 32, batch_size: int = 4, shuffle: bool = False, seed: int = 0) -> DataLoader:
    return DataLoader(regression_data(n, seed=seed), batch_size=batch_size, shuffle=shuffle)


class Regressor(LightningModule):
    """A linear layer with MSE; logs train_loss (step+epoch) and val_loss / test_loss (epoch)."""

    def __init__(self, lr: float = 0.05, features: int = 4, optimizer: str = "sgd") -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.layer = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Noisy(Regressor):
    """Dropout (uses the RNG every step), Adam and a per-epoch StepLR: everything a resume has to restore."""

    def __init__(self) -> None:
        super().__init__(lr=0.05)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.drop(x))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.7)}


def quiet_trainer(tmp_path: Any, **kwargs: Any) -> Trainer:
    """A CPU Trainer without progress bar, model summary, logger or checkpoints unless asked for."""
    defaults = {"accelerator": "cpu", "devices": 1, "default_root_dir": str(tmp_path), "enable_progress_bar": False,
                "logger": False, "enable_checkpointing": False, "num_sanity_val_steps": 0, "enable_model_summary": False}
    if any(type(c).__name__ == "ModelCheckpoint" for c in kwargs.get("callbacks", [])):
        defaults["enable_checkpointing"] = True
    defaults.update(kwargs)
    return Trainer(**defaults)


class Counter(Callback):
    """Counts batches per stage and records the global step at each training batch end."""

    def __init__(self) -> None:
        self.train_batches = 0
        self.val_batches = 0
        self.test_batches = 0
        self.predict_batches = 0
        self.val_runs = 0
        self.sanity_batches = 0
        self.epochs = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            self.sanity_batches += 1
        else:
            self.val_batches += 1

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_runs += 1

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.test_batches += 1

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.predict_batches += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs += 1
