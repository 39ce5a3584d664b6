"""``self.log(..., on_step=True)`` in validation and test reaches the loggers per batch, with Lightning 2.x's names.

As in Lightning 2.6: each batch's values are logged at a step that counts that loader's batches in this
fit / validate / test call (0, 1, ...; not the global step), the sanity check logs none, the step values
are in ``trainer.logged_metrics`` but not in ``callback_metrics``, and with several loaders the
``_step`` / ``_epoch`` goes before the loader suffix: ``val_loss_epoch/dataloader_idx_1``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn
from trainer_helpers import loader, quiet_trainer

from fabric_lite.trainer import LightningModule
from fabric_lite.trainer.callbacks import ModelCheckpoint
from fabric_lite.trainer.loggers import CSVLogger


class StepLogger(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.seen: list[tuple[str, int, int, float]] = []  # (stage, dataloader_idx, batch_idx, loss)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def _eval(self, stage, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        if not self.trainer.sanity_checking:
            self.seen.append((stage, dataloader_idx, batch_idx, loss.item()))
        self.log(f"{stage}_loss", loss, on_step=True, on_epoch=True)
        self.log(f"{stage}_index", float(batch_idx), on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval("test", batch, batch_idx, dataloader_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_validation_step_values_are_logged_per_batch_at_the_loaders_own_count(tmp_path):
    module, logger = StepLogger(), CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, num_sanity_val_steps=2)
    trainer.fit(module, loader(16), loader(16))  # 4 validation batches per epoch, after a 2-batch sanity check

    rows = [row for row in _rows(logger) if row.get("val_loss_step")]
    assert [int(row["step"]) for row in rows] == list(range(8))  # 0..3, then 4..7: not the global step, no sanity rows
    expected = [loss for stage, _, _, loss in module.seen if stage == "val"]
    assert [float(row["val_loss_step"]) for row in rows] == expected
    assert [float(row["val_index"]) for row in rows] == [0.0, 1.0, 2.0, 3.0] * 2
    epoch_rows = [row for row in _rows(logger) if row.get("val_loss_epoch")]
    assert len(epoch_rows) == 2
    assert float(epoch_rows[-1]["val_loss_epoch"]) == sum(expected[4:]) / 4
    assert {"val_loss_step", "val_index", "val_loss_epoch"} <= set(trainer.logged_metrics)
    assert not {"val_loss_step", "val_index"} & set(trainer.callback_metrics)  # as in Lightning: epoch values only
    assert set(trainer.callback_metrics) >= {"val_loss", "val_loss_epoch"}


def test_several_loaders_put_step_and_epoch_before_the_loader_suffix_and_count_apart(tmp_path):
    module, logger = StepLogger(), CSVLogger(tmp_path, name="run")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss_epoch/dataloader_idx_1", save_top_k=1)
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[checkpoint])
    trainer.fit(module, loader(16), [loader(8), loader(12)])

    rows = _rows(logger)
    first = [int(r["step"]) for r in rows if r.get("val_loss_step/dataloader_idx_0")]
    second = [int(r["step"]) for r in rows if r.get("val_loss_step/dataloader_idx_1")]
    assert first == [0, 1] and second == [0, 1, 2]
    assert "val_loss/dataloader_idx_1_epoch" not in trainer.logged_metrics
    assert {"val_loss_epoch/dataloader_idx_0", "val_loss_epoch/dataloader_idx_1", "val_index/dataloader_idx_1"} <= set(
        trainer.logged_metrics)
    second_losses = [loss for stage, idx, _, loss in module.seen if stage == "val" and idx == 1]
    assert trainer.callback_metrics["val_loss_epoch/dataloader_idx_1"].item() == sum(second_losses) / 3
    assert trainer.callback_metrics["val_loss/dataloader_idx_1"].item() == sum(second_losses) / 3
    assert checkpoint.best_model_path  # the monitored name exists at the epoch end


def test_each_test_call_counts_its_steps_from_zero(tmp_path):
    module, logger = StepLogger(), CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(tmp_path, logger=logger)
    trainer.test(module, loader(12))
    trainer.test(module, loader(12))
    steps = [int(row["step"]) for row in _rows(logger) if row.get("test_loss_step")]
    assert steps == [0, 1, 2, 0, 1, 2]
    results = trainer.test(module, loader(12), verbose=False)
    assert set(results[0]) == {"test_loss_epoch"}  # the returned epoch values hold no step value
