"""Lightning's order at the end of a training epoch and around a batch, as user code sees it: a metric logged in the
module's ``on_train_epoch_end`` decides ModelCheckpoint and EarlyStopping in the same epoch; ``on_train_batch_end``
receives ``{"loss": ...}``; StochasticWeightAveraging starts at Lightning's epoch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint


class EpochEndMetric(Regressor):
    """Logs its monitored value only in on_train_epoch_end (a sequence chosen per epoch)."""

    VALUES = (5.0, 3.0, 4.0, 4.0, 4.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def on_train_epoch_end(self):
        self.log("epoch_score", self.VALUES[self.current_epoch])


class Seen(Callback):
    """A monitoring callback of its own: what it reads at the epoch end."""

    monitors_metrics = True

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.values.append(float(trainer.callback_metrics["epoch_score"]))


def test_metric_logged_in_on_train_epoch_end_reaches_checkpoint_and_early_stopping_in_the_same_epoch(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="epoch_score", mode="min", save_top_k=1)
    stopping = EarlyStopping(monitor="epoch_score", mode="min", patience=1)
    seen = Seen()
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[checkpoint, stopping, seen])
    trainer.fit(EpochEndMetric(), loader(16, 4))  # no validation: both decide at the end of the training epoch
    assert seen.values == [5.0, 3.0, 4.0]  # each epoch's own value, from epoch 0 on (no "could not find")
    assert float(checkpoint.best_model_score) == 3.0
    assert "epoch=1-" in checkpoint.best_model_path
    # 3.0 at epoch 1, then 4.0 at epoch 2 is no improvement: patience 1 stops right there
    assert stopping.stopped_epoch == 2
    assert trainer.current_epoch == 3
    assert float(trainer.callback_metrics["epoch_score"]) == 4.0


class OutputRecorder(Callback):
    def __init__(self) -> None:
        self.outputs: list[Any] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.outputs.append(outputs)


class Returns(Regressor):
    def __init__(self, kind: str, manual: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.automatic_optimization = not manual
        self.losses: list[torch.Tensor] = []
        self.module_saw: list[Any] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.detach().clone())
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        if self.kind == "tensor":
            return loss
        if self.kind == "dict":
            return {"loss": loss, "count": batch_idx}
        return None

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.module_saw.append(outputs)


@pytest.mark.parametrize(("kind", "manual", "accumulate"), [
    ("tensor", False, 1), ("dict", False, 1), ("tensor", False, 2), ("none", False, 1), ("tensor", True, 1), ("dict", True, 1),
    ("none", True, 1),
])
def test_on_train_batch_end_receives_lightnings_step_output(tmp_path, kind, manual, accumulate):
    model, recorder = Returns(kind, manual), OutputRecorder()
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[recorder], accumulate_grad_batches=accumulate).fit(model, loader(12, 4))
    assert len(recorder.outputs) == len(model.module_saw) == 3
    for outputs, module_outputs, loss, batch_idx in zip(recorder.outputs, model.module_saw, model.losses, range(3)):
        assert module_outputs is outputs  # callbacks and module get the same object
        if kind == "none":
            assert outputs == {}  # Lightning hands an empty dict when training_step returned None
            continue
        assert isinstance(outputs, dict) and set(outputs) == ({"loss", "count"} if kind == "dict" else {"loss"})
        assert not outputs["loss"].requires_grad
        # under automatic optimisation the loss is the backpropagated one: divided by accumulate_grad_batches
        torch.testing.assert_close(outputs["loss"], loss / accumulate)
        if kind == "dict":
            assert outputs["count"] == batch_idx
