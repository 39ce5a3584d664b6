"""Built-in callbacks on real runs: ModelCheckpoint, EarlyStopping, StochasticWeightAveraging, LearningRateMonitor."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.errors import CheckpointError, ConfigurationError
from fabric_lite.loggers import CSVLogger
from fabric_lite.trainer.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)


class Scripted(Regressor):
    """Logs a scripted val_loss per epoch (so checkpoint ranking and early stopping are predictable)."""

    def __init__(self, values, **kwargs):
        super().__init__(**kwargs)
        self.values = values

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", float(self.values[self.current_epoch]))


def test_model_checkpoint_top_k_filename_last_and_best(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2, save_last=True,
                               filename="{epoch}-{val_loss:.2f}")
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[callback])
    trainer.fit(Scripted([0.5, 0.3, 0.4, 0.1, 0.6]), loader(8, 4), loader(4, 4))
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["epoch=1-val_loss=0.30.ckpt", "epoch=3-val_loss=0.10.ckpt", "last.ckpt"]
    assert callback.best_model_path == str(tmp_path / "ck" / "epoch=3-val_loss=0.10.ckpt")
    assert float(callback.best_model_score) == pytest.approx(0.1)
    state = torch.load(callback.best_model_path, weights_only=True)
    assert (state["epoch"], state["global_step"]) == (3, 8)  # written during epoch 3, after its 2 steps... of 4 epochs
    assert set(state["model"]) == {"layer.weight", "layer.bias"} and "optimizer_0" in state
    last = torch.load(callback.last_model_path, weights_only=True)
    assert last["global_step"] == 10
    # test(ckpt_path="best") loads the best weights, not the ones in memory
    model = trainer.lightning_module
    best_weight = state["model"]["layer.weight"]
    trainer.test(model, loader(4, 4), ckpt_path="best", verbose=False)
    torch.testing.assert_close(model.layer.weight.detach(), best_weight)
    trainer.test(model, loader(4, 4), ckpt_path="last", verbose=False)
    torch.testing.assert_close(model.layer.weight.detach(), last["model"]["layer.weight"])


def test_model_checkpoint_max_mode_every_n_and_missing_metric(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path / "max", monitor="val_loss", mode="max", save_top_k=1)
    quiet_trainer(tmp_path, max_epochs=3, callbacks=[callback]).fit(Scripted([0.5, 0.9, 0.1]), loader(8, 4), loader(4, 4))
    assert callback.best_model_path.endswith("epoch=1-step=4.ckpt")
    steps = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=3, save_top_k=-1)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[steps]).fit(Regressor(), loader(16, 4))
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]
    epochs = ModelCheckpoint(dirpath=tmp_path / "epochs", every_n_epochs=2, save_top_k=-1)
    quiet_trainer(tmp_path, max_epochs=4, callbacks=[epochs]).fit(Regressor(), loader(4, 4))
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch=1-step=2.ckpt", "epoch=3-step=4.ckpt"]
    missing = ModelCheckpoint(dirpath=tmp_path / "m", monitor="val_acc")
    with pytest.raises(ConfigurationError, match=r"monitor='val_acc'\) could not find 'val_acc' among the logged metrics \(.*val_loss"):
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[missing]).fit(Regressor(), loader(4, 4), loader(4, 4))


def test_checkpoint_argument_errors_and_missing_best(tmp_path):
    with pytest.raises(ConfigurationError, match=r"ModelCheckpoint\(mode='best'\) is not a known mode. Choose one of: min, max"):
        ModelCheckpoint(mode="best")
    with pytest.raises(ConfigurationError, match="cannot rank checkpoints without a metric"):
        ModelCheckpoint(save_top_k=3)
    with pytest.raises(ConfigurationError, match="sets two schedules"):
        ModelCheckpoint(every_n_epochs=1, every_n_train_steps=5)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    model = Regressor()
    trainer.fit(model, loader(4, 4))
    with pytest.raises(CheckpointError, match=r"ckpt_path='best'\) has no best checkpoint to load: no ModelCheckpoint"):
        trainer.test(model, loader(4, 4), ckpt_path="best")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        trainer.test(model, loader(4, 4), ckpt_path=tmp_path / "absent.ckpt")


@pytest.mark.parametrize(
    ("values", "kwargs", "stopped_after"),
    [
        ([1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.4], {"patience": 2}, 4),  # best at epoch 1; misses at 2, 3 -> stop after 3 (4 epochs)
        ([1.0, 0.99, 0.98, 0.97, 0.5, 0.4, 0.3], {"patience": 2, "min_delta": 0.05}, 3),  # 0.01 steps are no improvement
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], {"patience": 1, "mode": "max"}, 2),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], {"patience": 1, "mode": "max"}, 7),  # always improving: runs to max_epochs
    ],
)
def test_early_stopping_stops_at_the_expected_epoch(tmp_path, values, kwargs, stopped_after):
    trainer = quiet_trainer(tmp_path, max_epochs=7, callbacks=[EarlyStopping(monitor="val_loss", **kwargs)])
    trainer.fit(Scripted(values), loader(4, 4), loader(4, 4))
    assert trainer.current_epoch == stopped_after


def test_early_stopping_respects_min_epochs_and_train_metrics(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=10, min_epochs=5, callbacks=[EarlyStopping(monitor="val_loss", patience=1)])
    with pytest.warns(UserWarning, match="min_epochs=5"):
        trainer.fit(Scripted([1.0] * 10), loader(4, 4), loader(4, 4))
    assert trainer.current_epoch == 5
    # no validation: checked at the end of each training epoch, on a training metric
    stopper = EarlyStopping(monitor="train_loss", patience=0, mode="max")
    trainer = quiet_trainer(tmp_path, max_epochs=10, callbacks=[stopper])
    trainer.fit(Regressor(), loader(16, 4))  # the training loss falls: "max" sees no improvement after epoch 0
    assert trainer.current_epoch == 2 and stopper.stopped_epoch == 1
    with pytest.raises(ConfigurationError, match=r"EarlyStopping\(monitor='val_acc'\) could not find 'val_acc'"):
        quiet_trainer(tmp_path, max_epochs=2, callbacks=[EarlyStopping(monitor="val_acc")]).fit(Regressor(), loader(4, 4), loader(4, 4))


class BNModel(Regressor):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.layer(self.bn(x))


def test_swa_averages_the_weights_of_the_last_epochs_and_updates_batchnorm(tmp_path):
    snapshots: list[torch.Tensor] = []

    class Snapshot(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append(torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()]))

    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=1)
    model = BNModel()
    data = loader(16, 4, shuffle=True)
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[Snapshot(), swa])
    trainer.fit(model, data)
    final = torch.cat([p.detach().flatten() for p in model.parameters()])
    # Lightning's timing: swa_epoch_start=2 is epoch index 1; averaged at the starts of epochs 1-4 = after epochs 0-3
    torch.testing.assert_close(final, torch.stack(snapshots[:4]).mean(0))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.02)  # SWALR reached swa_lrs
    features = data.dataset.tensors[0]
    torch.testing.assert_close(model.bn.running_mean, features.mean(0), rtol=1e-4, atol=1e-5)  # update_bn over the data
    with pytest.raises(ConfigurationError, match="annealing_strategy='step'"):
        StochasticWeightAveraging(swa_lrs=0.1, annealing_strategy="step")


def test_learning_rate_monitor_logs_each_change(tmp_path):
    class Sched(Regressor):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)]

    monitor = LearningRateMonitor()
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[monitor], logger=CSVLogger(tmp_path, name="lr"))
    trainer.fit(Sched(), loader(8, 4))
    assert monitor.lrs == {"lr-SGD": [1.0, 0.5, 0.25]}
    text = (tmp_path / "lr" / "version_0" / "metrics.csv").read_text()
    assert "lr-SGD" in text.splitlines()[0]
    step_monitor = LearningRateMonitor(logging_interval="step")
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[step_monitor], logger=CSVLogger(tmp_path, name="s"),
                  log_every_n_steps=1).fit(Sched(), loader(8, 4))
    assert step_monitor.lrs == {"lr-SGD": [1.0, 1.0]}
    with pytest.raises(ConfigurationError, match="has no logger to write to"):
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[LearningRateMonitor()]).fit(Sched(), loader(4, 4))
