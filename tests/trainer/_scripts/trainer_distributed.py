"""Run by test_distributed.py on 2 CPU processes: a Trainer fit + validate under DDP or FSDP, each rank writes a JSON report.

    python trainer_distributed.py OUT_DIR ddp,fsdp     (the first Trainer re-runs this script for rank 1; the
                                                       later ones find the processes made and join them)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer_helpers import regression_data

from fabric_lite.trainer import LightningModule, Trainer
from fabric_lite.trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint

VAL = TensorDataset(torch.arange(7.0).unsqueeze(1).repeat(1, 4), torch.zeros(7, 1))  # 7 samples: ranks see 4 and 3


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, sync_dist=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self(x)
        self.log("sample_mean", x[:, 0].mean(), sync_dist=True)  # the exact mean of 0..6 is 3.0
        self.log("samples", float(len(x)), reduce_fx="sum", sync_dist=True)
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor.detach()


class Seen(Callback):
    def __init__(self):
        self.val_batches = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_batches += 1


def run(out: Path, strategy: str) -> None:
    out = out / strategy
    seen = Seen()
    checkpoint = ModelCheckpoint(dirpath=out / "ck", monitor="val_loss", save_last=True)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, logger=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(out),
                      callbacks=[seen, checkpoint, EarlyStopping(monitor="val_loss", patience=5)])
    model = Model()
    train = DataLoader(regression_data(32), batch_size=4)  # 2 ranks x 4 = the global batch of 8
    val = DataLoader(VAL, batch_size=2)
    trainer.fit(model, train, val)
    (validated,) = trainer.validate(model, val, verbose=False)
    # mid-epoch: a shuffled run checkpointed at step 6 (batch 2 of epoch 1) and resumed must end bit for bit equal
    shuffled = DataLoader(regression_data(32), batch_size=4, shuffle=True)
    saver = ModelCheckpoint(dirpath=out / "mid", every_n_train_steps=2, save_top_k=-1)
    uninterrupted = Model()
    Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=3, logger=False, enable_progress_bar=False,
            callbacks=[saver]).fit(uninterrupted, shuffled)
    equal = {}
    for name in ("epoch=1-step=6.ckpt", "epoch=0-step=4.ckpt"):  # mid-epoch 1; the end of epoch 0 (4 batches per rank)
        resumed_model = Model()
        Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=3, logger=False, enable_progress_bar=False,
                enable_checkpointing=False).fit(resumed_model, shuffled, ckpt_path=out / "mid" / name)
        equal[name] = all(torch.equal(_full(a), _full(b)) for a, b in zip(uninterrupted.parameters(), resumed_model.parameters()))
    mid_equal = equal["epoch=1-step=6.ckpt"]
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    report = {
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "weights": [full["layer.weight"].flatten().tolist(), full["layer.bias"].flatten().tolist()],
        "global_step": trainer.global_step,
        "val_batches_seen": seen.val_batches,
        "validated": validated,
        "best": checkpoint.best_model_path,
        "last_is": "dir" if os.path.isdir(checkpoint.last_model_path) else "file",
        "mid_epoch_resume_exact": mid_equal,
        "epoch_end_resume_exact": equal["epoch=0-step=4.ckpt"],
    }
    (out / f"{strategy}_rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    for name in sys.argv[2].split(","):
        run(Path(sys.argv[1]), name)
