"""``self.log`` as in Lightning 2.x: its full signature, unknown keywords refused, torchmetrics objects and collections
(forward value per step, compute() at the epoch end then reset()), and the values across 2 real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import LightningModule

torchmetrics = pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (pip install torchmetrics)")

SCRIPT = str(Path(__file__).parent / "_scripts" / "trainer_torchmetrics.py")


def classification_data(n: int = 24, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


class Classifier(LightningModule):
    """Lightning's documented torchmetrics pattern: metric objects as attributes, the object passed to self.log."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 2)
        self.train_acc = torchmetrics.classification.Accuracy(task="multiclass", num_classes=2)
        self.val_acc = torchmetrics.classification.Accuracy(task="multiclass", num_classes=2)
        self.val_mean = torchmetrics.MeanMetric()
        self.step_values: list[float] = []
        self.train_preds: list[torch.Tensor] = []
        self.val_preds: list[torch.Tensor] = []
        self.val_x0: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.layer(x)
        self.train_acc(logits.argmax(-1), y)
        self.step_values.append(float(self.train_acc._forward_cache))
        self.train_preds.append(torch.stack([logits.argmax(-1).detach(), y]))
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        return nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        preds = self.layer(x).argmax(-1)
        self.val_preds.append(torch.stack([preds, y]))
        self.val_x0.extend(x[:, 0].tolist())
        self.val_acc.update(preds, y)
        self.val_mean.update(x[:, 0])
        self.log("val_acc", self.val_acc)
        self.log("val_mean", self.val_mean)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _accuracy(pairs: list[torch.Tensor]) -> float:
    both = torch.cat(pairs, dim=1)
    return float((both[0] == both[1]).float().mean())


def test_torchmetrics_objects_step_value_epoch_compute_and_reset(tmp_path):
    model = Classifier()
    train = DataLoader(classification_data(24), batch_size=5)  # 5 batches, the last of 4: a per-batch mean would differ
    val = DataLoader(classification_data(11, seed=1), batch_size=4)
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, train, val)
    # on_step: the metric's forward value of the last batch; on_epoch: compute() over the epoch's predictions
    assert float(trainer.callback_metrics["train_acc_step"]) == pytest.approx(model.step_values[-1])
    assert float(trainer.callback_metrics["train_acc_epoch"]) == pytest.approx(_accuracy(model.train_preds[-5:]))
    assert float(trainer.callback_metrics["val_acc"]) == pytest.approx(_accuracy(model.val_preds[-3:]))
    assert float(trainer.callback_metrics["val_mean"]) == pytest.approx(float(classification_data(11, seed=1).tensors[0][:, 0].mean()))
    # reset after each epoch: the second epoch's value holds only its own batches, and nothing is left over
    assert _accuracy(model.train_preds[-5:]) != _accuracy(model.train_preds)
    for metric in (model.train_acc, model.val_acc, model.val_mean):
        assert metric._update_count == 0
    # trainer.validate returns compute() over that run alone
    model.val_preds.clear()
    (result,) = trainer.validate(model, val, verbose=False)
    assert result["val_acc"] == pytest.approx(_accuracy(model.val_preds))


class CollectionModel(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.metrics = torchmetrics.MetricCollection({"mae": torchmetrics.MeanAbsoluteError(), "mse": torchmetrics.MeanSquaredError()},
                                                     prefix="val_")
        self.seen: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.seen.append(torch.cat([out, y], dim=1))
        self.metrics.update(out, y)
        self.log_dict(self.metrics)


def test_log_dict_metric_collection(tmp_path):
    model = CollectionModel()
    (result,) = quiet_trainer(tmp_path).validate(model, loader(10, 4), verbose=False)
    seen = torch.cat(model.seen)
    assert result["val_mae"] == pytest.approx(float((seen[:, 0] - seen[:, 1]).abs().mean()), rel=1e-5)
    assert result["val_mse"] == pytest.approx(float(((seen[:, 0] - seen[:, 1]) ** 2).mean()), rel=1e-5)


def _fit_logging(tmp_path, **log_kwargs):
    class Model(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("extra", loss, **log_kwargs)
            return loss

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(Model(), loader(8, 4))
    return trainer


def test_every_lightning_log_argument_is_accepted(tmp_path):
    trainer = _fit_logging(tmp_path, prog_bar=True, logger=None, on_step=True, on_epoch=True, reduce_fx=torch.max, enable_graph=False,
                           sync_dist=False, sync_dist_group=None, add_dataloader_idx=True, batch_size=4, metric_attribute=None,
                           rank_zero_only=True)
    assert {"extra_step", "extra_epoch"} <= set(trainer.callback_metrics)
    assert "extra_step" in trainer.progress_bar_metrics


def test_unknown_log_keyword_raises_naming_it_and_the_valid_ones(tmp_path):
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'sync_dist_op'.*rank_zero_only"):
        _fit_logging(tmp_path, sync_dist_op="sum")
    model = Regressor()
    with pytest.raises(TypeError, match=r"self.log_dict\(...\) got unknown keyword argument\(s\) 'on_stpe'.*on_step"):
        model.log_dict({"a": 1.0}, on_stpe=True)


def test_log_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigurationError, match=r"reduce_fx='median'.*Choose one of: mean, sum, max, min"):
        _fit_logging(tmp_path, reduce_fx="median")

    class Collection(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("c", torchmetrics.MetricCollection([torchmetrics.MeanMetric()]))
            return super().training_step(batch, batch_idx)

    with pytest.raises(ConfigurationError, match=r"<MetricCollection>.*self.log_dict\(collection\)"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Collection(), loader(8, 4))

    class Detached(Regressor):
        def validation_step(self, batch, batch_idx):
            metric = torchmetrics.MeanMetric()
            metric.update(batch[0].sum())
            self.log("loose", metric)

    with pytest.raises(ConfigurationError, match=r"not an attribute of the LightningModule.*metric_attribute="):
        quiet_trainer(tmp_path).validate(Detached(), loader(8, 4), verbose=False)

    class Named(Regressor):
        def validation_step(self, batch, batch_idx):
            self.log("val/dataloader_idx_0", 1.0)

    with pytest.raises(ConfigurationError, match="add_dataloader_idx=False"):
        quiet_trainer(tmp_path).validate(Named(), loader(8, 4), verbose=False)

    class Vector(Regressor):
        def __init__(self):
            super().__init__()
            self.acc = torchmetrics.classification.Accuracy(task="multiclass", num_classes=3, average=None)

        def validation_step(self, batch, batch_idx):
            self.acc.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
            self.log("per_class", self.acc)

    with pytest.raises(ConfigurationError, match=r"compute\(\) returned \(3,\).*one number"):
        quiet_trainer(tmp_path).validate(Vector(), loader(8, 4), verbose=False)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_torchmetrics_epoch_value_is_the_full_dataset_value_and_combined_loaders_are_sharded(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    full_train = _accuracy([torch.tensor(r0["train_pairs"]), torch.tensor(r1["train_pairs"])])
    full_val = _accuracy([torch.tensor(r0["val_pairs"]), torch.tensor(r1["val_pairs"])])
    # evaluation is split without padding: the ranks saw 6 and 5 of the 11 samples
    assert (len(r0["val_pairs"][0]), len(r1["val_pairs"][0])) == (6, 5)
    assert sorted(r0["val_x0"] + r1["val_x0"]) == pytest.approx(sorted(classification_data(11, seed=1).tensors[0][:, 0].tolist()))
    for r in (r0, r1):
        assert r["world"] == 2
        # each rank saw only its share, yet the epoch value is the metric over every sample of both ranks
        assert r["train_acc_epoch"] == pytest.approx(full_train)
        assert r["val_acc"] == pytest.approx(full_val)
        assert r["val_mean"] == pytest.approx(float(classification_data(11, seed=1).tensors[0][:, 0].mean()), rel=1e-6)
    assert full_val != pytest.approx(_accuracy([torch.tensor(r0["val_pairs"])])) or full_val != pytest.approx(
        _accuracy([torch.tensor(r1["val_pairs"])]))  # the data makes a rank-local value differ from the full one
    # a one-sample validation set: rank 1 had no batch, took the metric from rank 0's list, and both got its value
    assert r0["tiny_val_acc"] == r1["tiny_val_acc"] and r0["tiny_val_acc"] in (0.0, 1.0)
    # (test_combined_loaders) a list of two training loaders under DDP: each loader sharded by its own
    # distributed sampler (rank r gets samples r, r+2, ...), the shorter one cycled
    assert r0["combined_seen"] == [[[0, 2], [100, 102]], [[4, 6], [100, 102]]]
    assert r1["combined_seen"] == [[[1, 3], [101, 103]], [[5, 7], [101, 103]]]


def test_one_metric_object_over_two_validation_loaders_has_lightnings_values(tmp_path):
    class Shared(Regressor):
        def __init__(self):
            super().__init__()
            self.mae = torchmetrics.MeanAbsoluteError()
            self.errors: list[list[float]] = [[], []]

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            x, y = batch
            out = self(x)
            self.errors[dataloader_idx].extend((out - y).abs().flatten().tolist())
            self.mae.update(out, y)
            self.log("val_mae", self.mae)

    model = Shared()
    first, second = quiet_trainer(tmp_path).validate(model, [loader(6, 4), loader(5, 2, seed=1)], verbose=False)
    # Lightning computes a metric when its loader is done, without a reset in between: the object shared by both
    # loaders gives loader 0's value, then the value over both (lightning.pytorch 2.6.6 does the same)
    assert first["val_mae/dataloader_idx_0"] == pytest.approx(sum(model.errors[0]) / 6, rel=1e-6)
    assert second["val_mae/dataloader_idx_1"] == pytest.approx(sum(model.errors[0] + model.errors[1]) / 11, rel=1e-6)
    assert model.mae._update_count == 0  # reset at the end
