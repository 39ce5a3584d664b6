"""A Trainer run that a test stops with a real SIGINT (Ctrl-C): argv[1] is fit / validate / test / predict, argv[2]
(optional) the number of CPU processes (strategy "ddp" when more than 1).

Prints READY when the run is under way (then each batch sleeps so the signal lands inside the loop), then after
the call returns: what the exception hooks saw, the logger's finalize status and trainer.interrupted.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.loggers.base import Logger
from fabric_lite.trainer import Callback, LightningDataModule, LightningModule, Trainer

stage = sys.argv[1]
devices = int(sys.argv[2]) if len(sys.argv) > 2 else 1


class Events(list):
    def append(self, event: str) -> None:
        super().append(event)
        print("hook", event, flush=True)  # seen even when the process then ends (several processes: Ctrl-C stops the job)


events = Events()


class Recorder(Logger):
    name = "recorder"
    version = 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def finalize(self, status):
        events.append(f"logger.finalize:{status}")


class Seen(Callback):
    def on_exception(self, trainer, pl_module, exception):
        events.append(f"callback.on_exception:{type(exception).__name__}")


class Slow(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def _slow(self, batch, batch_idx):
        if batch_idx == 1 and self.global_rank == 0:
            print("READY", flush=True)
        if batch_idx >= 1:
            time.sleep(0.05)
        return self.layer(batch[0]).sum()

    def training_step(self, batch, batch_idx):
        return self._slow(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self._slow(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._slow(batch, batch_idx)

    def predict_step(self, batch, batch_idx):
        return self._slow(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_exception(self, exception):
        events.append(f"module.on_exception:{type(exception).__name__}")


class Data(LightningDataModule):
    def _loader(self):
        return DataLoader(TensorDataset(torch.randn(100000, 2)), batch_size=1)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader

    def on_exception(self, exception):
        events.append(f"datamodule.on_exception:{type(exception).__name__}")


trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1, logger=Recorder(), callbacks=[Seen()], enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
started = time.monotonic()
result = getattr(trainer, stage)(Slow(), datamodule=Data())
print("returned", result, flush=True)
print("events", ",".join(events), flush=True)
print("interrupted", trainer.interrupted, flush=True)
print("after", "ok", flush=True)  # the script goes on after a Ctrl-C'd call
