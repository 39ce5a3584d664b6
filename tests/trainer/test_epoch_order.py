"""Lightning's order at the end of a training epoch and around a batch, as user code sees it: a metric logged in the
module's ``on_train_epoch_end`` decides ModelCheckpoint and EarlyStopping in the same epoch; ``on_train_batch_end``
receives ``{"loss": ...}``; StochasticWeightAveraging starts at Lightning's epoch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trainer_helpers import Noisy, Regressor, loader, quiet_trainer

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import LightningModule
from fabric_lite.trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint, StochasticWeightAveraging


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


@pytest.mark.parametrize("with_validation", [False, True])
def test_metric_logged_in_on_train_epoch_end_reaches_checkpoint_and_early_stopping_in_the_same_epoch(tmp_path, with_validation):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="epoch_score", mode="min", save_top_k=1)
    stopping = EarlyStopping(monitor="epoch_score", mode="min", patience=1)
    seen = Seen()
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[checkpoint, stopping, seen])
    # Without validation, or with validation once per epoch (Lightning's default), both decide at the end of the
    # training epoch, after the module's on_train_epoch_end (validation has already run at the last batch).
    trainer.fit(EpochEndMetric(), loader(16, 4), loader(8, 4) if with_validation else None)
    if with_validation:
        assert "val_loss" in trainer.callback_metrics
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
            assert outputs is None  # a skipped batch (Lightning 2.6 hands {} there)
            continue
        assert isinstance(outputs, dict) and set(outputs) == ({"loss", "count"} if kind == "dict" else {"loss"})
        assert not outputs["loss"].requires_grad
        # under automatic optimisation the loss is the backpropagated one: divided by accumulate_grad_batches
        torch.testing.assert_close(outputs["loss"], loss / accumulate)
        if kind == "dict":
            assert outputs["count"] == batch_idx


class SWAModel(LightningModule):
    """The model and data of a side-by-side run under lightning.pytorch 2.6.6 (numbers below)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bn = nn.Identity()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        a, b = batch
        return nn.functional.mse_loss(self.layer(self.bn(a)), b)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _swa_data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


class Weights(Callback):
    def __init__(self) -> None:
        self.after_epoch: list[torch.Tensor] = []
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.after_epoch.append(torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()]))


# lightning.pytorch 2.6.6, same model/data, max_epochs=5, StochasticWeightAveraging(swa_lrs=0.02, annealing_epochs=1):
LIGHTNING_SWA = {2: [0.282563, 0.696422, 0.332742, 0.667924, 0.109533], 1: [0.173612, 0.55022, 0.104682, 0.369354, 0.032618]}


@pytest.mark.parametrize("start", [2, 1, 0.5])
def test_swa_integer_start_is_lightnings_epoch_and_the_average_is_the_hand_computed_one(tmp_path, start):
    weights = Weights()
    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=start, annealing_epochs=1)
    model = SWAModel()
    quiet_trainer(tmp_path, max_epochs=5, callbacks=[swa, weights]).fit(model, _swa_data())
    first = {2: 1, 1: 0, 0.5: 1}[start]  # the 0-based SWA epoch: int k is the k-th epoch; 0.5 * 5 epochs -> int(2.5) = 2nd
    # SWALR from the SWA epoch on (annealed to swa_lrs after 1 epoch)
    assert weights.lrs[:first + 1] == [0.05] * (first + 1) and weights.lrs[first + 1:] == [0.02] * (4 - first)
    # averaged at the start of epochs first..4, i.e. the weights before them: the initial ones when first == 0
    initial = torch.cat([p.detach().flatten() for p in SWAModel().parameters()])
    before = [initial] + weights.after_epoch[:4]
    expected = torch.stack(before[first:5]).mean(0)
    final = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(final, expected)
    torch.testing.assert_close(final, torch.tensor(LIGHTNING_SWA[2 if start == 0.5 else start]), rtol=0, atol=2e-6)


def test_swa_stopped_before_its_last_epoch_keeps_the_trained_weights_and_bad_start_is_refused(tmp_path):
    class Stop(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = trainer.current_epoch == 2

    weights = Weights()
    model = SWAModel()
    quiet_trainer(tmp_path, max_epochs=5, callbacks=[StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=1), weights, Stop()]).fit(
        model, _swa_data())
    # as in Lightning, only a fit that reaches max_epochs ends with the averaged weights
    torch.testing.assert_close(torch.cat([p.detach().flatten() for p in model.parameters()]), weights.after_epoch[-1])
    with pytest.raises(ConfigurationError, match=r"swa_epoch_start=0\) is neither an epoch >= 1 .*swa_epoch_start=1 to start at the first"):
        StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0)


def test_checkpoint_monitoring_a_validation_metric_waits_for_the_first_validation(tmp_path):
    # every_n_train_steps=1 checks before the first validation logged val_loss: Lightning warns and saves no top-k
    # file then (it raises only once a validation has run); from the first validation on it ranks by val_loss
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", every_n_train_steps=1, save_top_k=-1)
    with pytest.warns(UserWarning, match=r"monitor='val_loss'\) could not find 'val_loss'.*no validation has run yet"):
        quiet_trainer(tmp_path, max_epochs=2, callbacks=[checkpoint]).fit(Regressor(), loader(8, 4), loader(4, 4))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch=1-step=3.ckpt", "epoch=1-step=4.ckpt"]


def test_resume_from_a_checkpoint_saved_at_the_training_epoch_end_with_validation(tmp_path):
    def run(name, ckpt_path=None, callbacks=()):
        torch.manual_seed(123)
        model = Noisy()
        trainer = quiet_trainer(tmp_path / name, max_epochs=3, callbacks=[EarlyStopping(monitor="val_loss", patience=100), *callbacks])
        trainer.fit(model, loader(24, 4, shuffle=True), loader(8, 4), ckpt_path=ckpt_path)
        return trainer, model

    saver = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=-1)
    _, full = run("full", callbacks=[saver])
    path = next((tmp_path / "ck").glob("epoch=0-step=6*.ckpt"))
    assert torch.load(path, weights_only=True)["loops"]["phase"] == "epoch_end_hooks_done"  # after the module's epoch end
    resumed_trainer, resumed = run("resumed", ckpt_path=path)
    assert resumed_trainer.global_step == 18
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
