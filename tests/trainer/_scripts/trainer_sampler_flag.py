"""Two ranks (strategy="ddp" re-runs this script): how many samples each rank trains on with
use_distributed_sampler True (the default: its share) and False (the loader as given)."""

import json
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.trainer import LightningModule, Trainer


class Counting(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen += x.flatten().long().tolist()
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


out = sys.argv[1]
data = TensorDataset(torch.arange(16.0).unsqueeze(1), torch.zeros(16, 1))
report = {}
for flag in (True, False):
    model = Counting()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=flag)
    trainer.fit(model, DataLoader(data, batch_size=4))
    report[str(flag)] = sorted(model.seen)
with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
    json.dump(report, f)
