"""The loggers' step during fit is Lightning 2.x's: the training batches that stepped before the current one.

Each expected list below is what ``lightning.pytorch`` 2.6.6 wrote to its CSVLogger for the same module and
flags (checked by hand with the import swapped): the rows in order, each as (step, the columns it fills).
Training values of a batch are at 0, 1, ... (one per batch, also when two optimizers step in it), only
batches that stepped are logged under gradient accumulation, validation and epoch values share the step
of the last batch before them, every row carries the epoch, and LearningRateMonitor logs before the batch.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trainer_helpers import quiet_trainer

from fabric_lite.trainer import LightningModule
from fabric_lite.trainer.callbacks import LearningRateMonitor, ModelCheckpoint
from fabric_lite.trainer.loggers import CSVLogger


class TwoHeads(LightningModule):
    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        x = batch[0]
        if not self.automatic_optimization:  # a GAN's shape: two optimizers step in every batch
            first, second = self.optimizers()
            for optimizer, head, name in ((first, self.a, "l1"), (second, self.b, "l2")):
                loss = head(x).pow(2).mean()
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
                self.log(name, loss, on_epoch=name == "l2")
            return None
        loss = (self.a(x) + self.b(x)).pow(2).mean()
        self.log("tl", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("v", self.a(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        if not self.automatic_optimization:
            return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1), "interval": "step"}}


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(20, 4, generator=torch.Generator().manual_seed(0))), batch_size=4)


def _rows(tmp_path: Path, **flags) -> tuple[int, list[tuple[int, tuple[str, ...]]]]:
    manual = flags.pop("manual", False)
    logger = CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, **flags)
    trainer.fit(TwoHeads(manual), _loader(), _loader())
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [(int(r["step"]), tuple(sorted(k for k, v in r.items() if v and k != "step"))) for r in csv.DictReader(handle)]
    return trainer.global_step, rows


def test_two_optimizers_per_batch_log_once_per_batch_as_lightning(tmp_path):
    global_step, rows = _rows(tmp_path, manual=True, log_every_n_steps=1)
    assert global_step == 20  # 5 batches x 2 epochs x 2 optimizer steps
    step = ("epoch", "l1", "l2_step")
    assert rows == [(0, step), (1, step), (2, step), (3, step), (4, step), (4, ("epoch", "v")), (4, ("epoch", "l2_epoch")),
                    (5, step), (6, step), (7, step), (8, step), (9, step), (9, ("epoch", "v")), (9, ("epoch", "l2_epoch"))]


def test_accumulation_logs_the_batches_that_stepped_and_the_lr_monitor_logs_before_each_batch(tmp_path):
    global_step, rows = _rows(tmp_path, accumulate_grad_batches=2, log_every_n_steps=1, callbacks=[LearningRateMonitor()])
    assert global_step == 6  # 3 updates per epoch of 5 batches (2 + 2 + the last one)
    lr, step = ("lr-SGD",), ("epoch", "tl_step")
    assert rows == [(0, lr), (0, lr), (0, step), (1, lr), (1, lr), (1, step), (2, lr), (2, step), (2, ("epoch", "v")),
                    (2, ("epoch", "tl_epoch")), (3, lr), (3, lr), (3, step), (4, lr), (4, lr), (4, step), (5, lr), (5, step),
                    (5, ("epoch", "v")), (5, ("epoch", "tl_epoch"))]


def test_log_every_n_steps_counts_from_the_first_batch_as_lightning(tmp_path):
    _, rows = _rows(tmp_path, log_every_n_steps=2, callbacks=[LearningRateMonitor()])
    lr, step = ("lr-SGD",), ("epoch", "tl_step")
    assert rows == [(1, lr), (1, step), (3, lr), (3, step), (4, ("epoch", "v")), (4, ("epoch", "tl_epoch")),
                    (5, lr), (5, step), (7, lr), (7, step), (9, lr), (9, step), (9, ("epoch", "v")), (9, ("epoch", "tl_epoch"))]


def test_a_mid_epoch_resume_continues_the_step_count_and_an_old_checkpoint_falls_back_to_the_global_step(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)
    _, full = _rows(tmp_path / "full", manual=True, log_every_n_steps=1, callbacks=[checkpoint])
    path = tmp_path / "ck" / "epoch=0-step=6.ckpt"  # two optimizer steps per batch: after batch 2 of epoch 0
    assert path.exists()

    logger = CSVLogger(tmp_path / "resumed", name="run")
    quiet_trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1).fit(TwoHeads(True), _loader(), _loader(),
                                                                                  ckpt_path=path)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        resumed = [int(r["step"]) for r in csv.DictReader(handle) if r.get("l1")]
    assert resumed == [3, 4, 5, 6, 7, 8, 9]  # batches 3 and 4 of epoch 0, then epoch 1: as the uninterrupted run
    assert resumed == [step for step, keys in full if "l1" in keys][3:]

    saved = torch.load(path, weights_only=False)
    del saved["loops"]["batches_that_stepped"]  # as written before the count was saved
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False)
    trainer.fit(TwoHeads(True), _loader(), _loader(), ckpt_path=old)
    assert trainer.state.batches_that_stepped == 6 + 2  # the global step (6), then the epoch's 2 remaining batches
