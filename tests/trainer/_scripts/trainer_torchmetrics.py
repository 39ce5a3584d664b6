"""Run by test_logging_metrics.py on 2 CPU processes (DDP, gloo): torchmetrics objects logged with self.log, and a
list of two training loaders (each one sharded by Fabric's distributed sampler).

    python trainer_torchmetrics.py OUT_DIR     (the Trainer re-runs this script for rank 1)

Each rank writes the logged epoch values and the (prediction, target) pairs it saw, so the test can compute
the metric over the whole data set itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_combined_loaders import TwoLoaders, numbered
from test_logging_metrics import Classifier, classification_data

from fabric_lite.trainer import Trainer


def main(out: Path) -> None:
    model = Classifier()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(classification_data(24), batch_size=5), DataLoader(classification_data(11, seed=1), batch_size=4))
    train_batches = trainer.num_training_batches
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    model.val_preds.clear()
    model.val_x0.clear()
    (validated,) = trainer.validate(model, DataLoader(classification_data(11, seed=1), batch_size=4), verbose=False)
    val_pairs = torch.cat(model.val_preds, dim=1)
    report = {
        "world": trainer.world_size,
        "train_acc_epoch": metrics["train_acc_epoch"],
        "val_acc": validated["val_acc"],
        "val_mean": validated["val_mean"],
        "train_pairs": torch.cat(model.train_preds[-train_batches:], dim=1).tolist(),
        "val_pairs": val_pairs.tolist(),
        "val_x0": list(model.val_x0),
    }
    # one sample for two ranks: rank 1 runs no batch and never logs, yet must join rank 0's compute() (a collective)
    (tiny,) = trainer.validate(model, DataLoader(classification_data(1, seed=2), batch_size=4), verbose=False)
    report["tiny_val_acc"] = tiny["val_acc"]
    several = TwoLoaders()
    Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_progress_bar=False,
            enable_checkpointing=False).fit(several, [numbered(8, 2), numbered(4, 2, offset=100)])
    report["combined_seen"] = several.seen
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
