"""The digits classifier of examples/digits.py in Lightning's organised style: module + data module + Trainer.

The same MLP, data split and optimizer as ``examples/digits.py``; the loop, device moves, process
handling, validation averaging and checkpoints are the Trainer's. A Lightning script ports with an
import swap (``lightning.pytorch`` -> ``fabric_lite.trainer``). No download: scikit-learn ships the data.

    python examples/digits_trainer.py                                   # one process, best device found
    python examples/digits_trainer.py --accelerator cpu --devices 2     # 2 DDP processes (the script re-runs itself)
    fabric-run --accelerator cpu --devices 2 examples/digits_trainer.py
    python examples/digits_trainer.py --precision bf16-mixed --strategy fsdp --devices 2 --accelerator cpu
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.trainer import LightningDataModule, LightningModule, Trainer
from fabric_lite.trainer.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar

TARGET = 0.90


class DigitsData(LightningDataModule):
    """A fixed 80/20 stratified split of scikit-learn's 8x8 digits, standardised with the training part's statistics."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        x, y = load_digits(return_X_y=True)
        x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
        scaler = StandardScaler().fit(x_train)

        def to_dataset(features, labels) -> TensorDataset:
            features = torch.tensor(scaler.transform(features), dtype=torch.float32)
            return TensorDataset(features, torch.tensor(labels, dtype=torch.long))

        self.train_set, self.val_set = to_dataset(x_train, y_train), to_dataset(x_val, y_val)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class DigitsClassifier(LightningModule):
    def __init__(self, lr: float = 3e-3, hidden: int = 128) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        # Weighted by batch size and summed over processes: each validation sample counts exactly once.
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(dim=1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        # eps=1e-4 as in digits.py: safe under 16-true, where 1e-8 rounds to 0
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4, eps=1e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # None means "not given": Fabric's default, or what fabric-run hands over.
    parser.add_argument("--accelerator", default=None)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--devices", default=None)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--root-dir", default="out/digits_trainer", help="logs (CSV) and checkpoints go here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = {k: getattr(args, k) for k in ("accelerator", "strategy", "devices", "precision") if getattr(args, k)}
    if "devices" in given and given["devices"].lstrip("-").isdigit():
        given["devices"] = int(given["devices"])
    torch.manual_seed(args.seed)
    trainer = Trainer(
        **given,
        max_epochs=args.epochs,
        default_root_dir=args.root_dir,
        callbacks=[ModelCheckpoint(monitor="val_acc", mode="max", filename="{epoch}-{val_acc:.3f}"),
                   EarlyStopping(monitor="val_loss", patience=5), ProgressBar(plain=True)],
    )
    model, data = DigitsClassifier(lr=args.lr), DigitsData(batch_size=args.batch_size)
    trainer.fit(model, datamodule=data)
    (result,) = trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)
    accuracy = result["test_acc"]
    passed = accuracy > TARGET
    if trainer.is_global_zero:
        print(f"best checkpoint: {trainer.checkpoint_callback.best_model_path}")
        print(f"final validation accuracy: {accuracy:.3f} (target > {TARGET:.2f}: {'PASSED' if passed else 'FAILED'})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
