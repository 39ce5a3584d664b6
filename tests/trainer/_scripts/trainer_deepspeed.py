"""Run by test_trainer_deepspeed.py on 2 CPU processes: the same Trainer fit under DDP and DeepSpeed ZeRO stages.

    python trainer_deepspeed.py OUT_DIR ddp,deepspeed_stage_2,deepspeed_stage_3

The first Trainer re-runs this script for rank 1; the later ones find the processes made and join them. Per
strategy each rank writes OUT_DIR/<strategy>_rank<R>.json: the loss of every step, the final weights (gathered
from ZeRO-3's shards), and the weights of a second fit resumed from the checkpoint ModelCheckpoint saved at step 5 (mid
epoch 1; DDP, the reference, is not resumed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.trainer import LightningModule, Trainer
from fabric_lite.trainer.callbacks import Callback, ModelCheckpoint

STEPS = 8  # 2 epochs of 4 batches of 4 per rank


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    return TensorDataset(x, x[:, :1] * 0.5 - x[:, 1:2] * 0.25 + 0.1)


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)  # Adam: its state must survive the checkpoint too


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def full_weights(model: nn.Module) -> list[list[float]]:
    """Every parameter in full, gathered from ZeRO-3's partitions when the model is sharded (a collective)."""
    params = list(model.parameters())
    sharded = hasattr(params[0], "ds_id")
    if sharded:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return [p.detach().flatten().tolist() for p in params]
    return [p.detach().flatten().tolist() for p in params]


def trainer(strategy: str, out: Path, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   default_root_dir=str(out), **kwargs)


def run(out: Path, strategy: str) -> None:
    out = out / strategy
    started = time.perf_counter()
    losses = Losses()
    saver = ModelCheckpoint(dirpath=out / "ck", every_n_train_steps=5, save_top_k=-1)
    model = Model()
    first = trainer(strategy, out, callbacks=[losses, saver])
    loader = DataLoader(data(), batch_size=4)
    first.fit(model, loader)
    report = {
        "rank": first.global_rank,
        "world": first.world_size,
        "strategy": type(first.strategy).__name__,
        "global_step": first.global_step,
        "losses": losses.losses,
        "weights": full_weights(model),
        "checkpoints": sorted(os.listdir(out / "ck")),
    }
    report["fit_s"] = time.perf_counter() - started
    if strategy != "ddp":
        # Resume from the checkpoint of step 5 (batch 1 of epoch 1): the end must be the uninterrupted run's.
        resumed_losses = Losses()
        resumed = Model()
        trainer(strategy, out, callbacks=[resumed_losses], enable_checkpointing=False).fit(
            resumed, loader, ckpt_path=out / "ck" / "epoch=1-step=5.ckpt"
        )
        report["resumed_losses"] = resumed_losses.losses
        report["resumed_weights"] = full_weights(resumed)
        report["resumed_step"] = resumed.trainer.global_step
    report["total_s"] = time.perf_counter() - started
    (out / f"{strategy}_rank{first.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    for name in sys.argv[2].split(","):
        run(Path(sys.argv[1]), name)
