"""LightningModule and LightningDataModule on real runs: optimizer configurations, manual optimisation, logging, hparams."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.trainer import LightningDataModule, LightningModule
from fabric_lite.trainer.callbacks import Callback


class LRs(Callback):
    def __init__(self) -> None:
        self.per_step: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.per_step.append(trainer.optimizers[0].param_groups[0]["lr"])


def with_optimizers(returned_by):
    class Model(Regressor):
        def configure_optimizers(self):
            return returned_by(self)

    return Model()


def test_scheduler_intervals_and_frequency(tmp_path):
    lrs = LRs()

    def config(model):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
                                                  "interval": "step", "frequency": 2}}

    quiet_trainer(tmp_path, max_epochs=1, callbacks=[lrs]).fit(with_optimizers(config), loader(24, 4))
    assert lrs.per_step == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    lrs = LRs()

    def epochs(model):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.1)]

    quiet_trainer(tmp_path, max_epochs=3, callbacks=[lrs]).fit(with_optimizers(epochs), loader(8, 4))
    assert lrs.per_step == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_reduce_on_plateau_watches_the_monitored_metric(tmp_path):
    lrs = LRs()

    class Flat(Regressor):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", 1.0)  # never improves

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}

    quiet_trainer(tmp_path, max_epochs=4, callbacks=[lrs]).fit(Flat(), loader(4, 4), loader(4, 4))
    assert lrs.per_step == [1.0, 1.0, 0.5, 0.25]  # the first value sets the best; each later one is a miss

    class Unlogged(Flat):
        def configure_optimizers(self):
            result = super().configure_optimizers()
            result["lr_scheduler"]["monitor"] = "val_acc"
            return result

    with pytest.raises(ConfigurationError, match="monitors 'val_acc', which no self.log call recorded"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Unlogged(), loader(4, 4), loader(4, 4))


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda m: "adam", "returned a str, which is not an optimizer configuration"),
        (lambda m: [torch.optim.SGD(m.parameters(), lr=0.1), torch.optim.SGD(m.parameters(), lr=0.1)],
         "returned 2 optimizers, but automatic optimisation steps one. Fix: set self.automatic_optimization = False"),
        (lambda m: {"lr_scheduler": None}, "returned a dict without 'optimizer'"),
        (lambda m: {"optimizer": (o := torch.optim.SGD(m.parameters(), lr=0.1)),
                    "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(o, 1), "interval": "batch"}},
         "'interval': 'batch' is not a known interval. Choose one of: step, epoch"),
        (lambda m: {"optimizer": (o := torch.optim.SGD(m.parameters(), lr=0.1)),
                    "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o)},
         "ReduceLROnPlateau without 'monitor'"),
    ],
)
def test_bad_optimizer_configurations(tmp_path, returned, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        quiet_trainer(tmp_path, max_steps=1).fit(with_optimizers(returned), loader(4, 4))


class GAN(LightningModule):
    """Two optimizers, manual optimisation with toggle_optimizer, as in the reference's GAN example."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.generator = nn.Linear(2, 2)
        self.discriminator = nn.Linear(2, 1)
        self.frozen_seen: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        real = batch[0]
        self.toggle_optimizer(opt_g)
        self.frozen_seen.append((self.generator.weight.requires_grad, self.discriminator.weight.requires_grad))
        g_loss = -self.discriminator(self.generator(torch.randn_like(real))).mean()
        self.manual_backward(g_loss)
        assert self.discriminator.weight.grad is None  # frozen: no gradient reached it
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)
        with self.toggled_optimizer(opt_d):
            d_loss = self.discriminator(self.generator(torch.randn_like(real)).detach()).mean() - self.discriminator(real).mean()
            self.manual_backward(d_loss)
            opt_d.step()
            opt_d.zero_grad()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.generator.parameters(), lr=0.1), torch.optim.SGD(self.discriminator.parameters(), lr=0.1)]


def test_manual_optimisation_with_two_optimizers(tmp_path):
    model = GAN()
    before = [p.detach().clone() for p in model.parameters()]
    steps = []

    class Steps(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            steps.append(trainer.global_step)

    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[Steps()])
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4))
    assert trainer.global_step == 4 and steps == [0, 1, 2, 3]  # one global step per optimizer.step, as Lightning
    assert model.frozen_seen == [(True, False), (True, False)]
    assert all(p.requires_grad for p in model.parameters())  # untoggled
    # both weights moved (the discriminator's bias cancels out of d_loss, so only weights are compared)
    assert not torch.equal(before[0], model.generator.weight) and not torch.equal(before[2], model.discriminator.weight)
    assert {"g_loss", "d_loss"} <= set(trainer.callback_metrics)


def test_save_hyperparameters_device_and_trainer_attachment(tmp_path):
    class Hp(LightningModule):
        def __init__(self, hidden=8, lr=0.1, data=None, **extra):
            super().__init__()
            self.save_hyperparameters(ignore="data")

    model = Hp(hidden=16, name="x")
    assert model.hparams == {"hidden": 16, "lr": 0.1, "name": "x"} and model.hparams.hidden == 16
    model.hparams.lr = 0.5
    assert model.hparams_initial.lr == 0.1
    with pytest.raises(UsageError, match="is not attached to a Trainer. Fix: run it with Trainer"):
        model.trainer  # noqa: B018
    assert model.device == torch.device("cpu") and model.current_epoch == 0 and model.global_step == 0

    class Named(LightningModule):
        def __init__(self, a=1, b=2):
            super().__init__()
            self.save_hyperparameters("a")

    assert Named().hparams == {"a": 1}

    class Wrong(LightningModule):
        def __init__(self, a=1):
            super().__init__()
            self.save_hyperparameters("c")

    with pytest.raises(ConfigurationError, match=r"'c' is not an argument of __init__. Fix: name one of: a"):
        Wrong()


def test_log_rejects_bad_values_and_places(tmp_path):
    class Bad(Regressor):
        def __init__(self, what):
            super().__init__()
            self.what = what

        def training_step(self, batch, batch_idx):
            if self.what == "vector":
                self.log("v", torch.ones(3))
            if self.what == "fx":
                self.log("v", 1.0, reduce_fx="median")
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self):
            if self.what == "on_step":
                self.log("v", 1.0, on_step=True)

    for what, message in [("vector", r"a logged value is one number"), ("fx", r"reduce_fx='median'\) is not a known reduction"),
                          ("on_step", r"on_step=True\) was called in on_train_epoch_end, which runs once per epoch")]:
        with pytest.raises((ConfigurationError, UsageError), match=message):
            quiet_trainer(tmp_path, max_epochs=1).fit(Bad(what), loader(4, 4))


def test_epoch_metrics_are_weighted_by_batch_size(tmp_path):
    class Mean(Regressor):
        def validation_step(self, batch, batch_idx):
            self.log("x_mean", batch[0][:, 0].mean())
            self.log("x_sum", batch[0][:, 0].sum(), reduce_fx="sum")
            self.log("x_max", batch[0][:, 0].max(), reduce_fx="max")

    data = loader(10, 4)  # batches of 4, 4 and 2
    trainer = quiet_trainer(tmp_path)
    (result,) = trainer.validate(Mean(), data, verbose=False)
    column = data.dataset.tensors[0][:, 0]
    assert result["x_mean"] == pytest.approx(float(column.mean()), rel=1e-6)  # not the mean of the 3 batch means
    assert result["x_sum"] == pytest.approx(float(column.sum()), rel=1e-6)
    assert result["x_max"] == pytest.approx(float(column.max()))
    assert float(trainer.callback_metrics["x_mean"]) == pytest.approx(result["x_mean"])


class DigitsLikeData(LightningDataModule):
    def __init__(self, folder):
        super().__init__()
        self.folder = folder
        self.calls: list[str] = []

    def prepare_data(self):
        self.calls.append("prepare_data")
        torch.save(torch.randn(12, 4), self.folder / "x.pt")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        x = torch.load(self.folder / "x.pt")
        self.data = TensorDataset(x, x.sum(1, keepdim=True))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=4)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=6)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=12)

    def predict_dataloader(self):
        return DataLoader(self.data, batch_size=3)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls.append("transfer")
        return batch


def test_datamodule_drives_every_stage(tmp_path):
    dm = DigitsLikeData(tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    model = Regressor()
    trainer.fit(model, datamodule=dm)
    assert dm.calls[:2] == ["prepare_data", "setup:fit"] and dm.calls.count("transfer") == 3 + 2
    assert dm.trainer is trainer
    (tested,) = trainer.test(model, datamodule=dm, verbose=False)
    assert "test_loss" in tested
    assert len(trainer.predict(model, datamodule=dm)) == 4
    assert [c for c in dm.calls if c.startswith("setup")] == ["setup:fit", "setup:test", "setup:predict"]
    with pytest.raises(ConfigurationError, match="got both. Fix: pass either dataloaders or datamodule"):
        trainer.fit(model, loader(4), datamodule=dm)
    with pytest.raises(ConfigurationError, match="found no training data"):
        trainer.fit(model)


def test_several_validation_loaders_keep_their_metrics_apart(tmp_path):
    seen: list[int] = []

    class Two(Regressor):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append(dataloader_idx)
            self.log("x_mean", batch[0][:, 0].mean())

    small, large = loader(4, 4, seed=1), loader(8, 4, seed=2)
    results = quiet_trainer(tmp_path).validate(Two(), [small, large], verbose=False)
    assert seen == [0, 1, 1]
    assert results[0] == {"x_mean/dataloader_idx_0": pytest.approx(float(small.dataset.tensors[0][:, 0].mean()))}
    assert results[1] == {"x_mean/dataloader_idx_1": pytest.approx(float(large.dataset.tensors[0][:, 0].mean()))}


def test_on_train_batch_start_minus_one_ends_the_epoch_and_configure_callbacks(tmp_path):
    from trainer_helpers import Counter

    counter = Counter()

    class Short(Regressor):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 1 else None

        def configure_callbacks(self):
            return [counter]

    trainer = quiet_trainer(tmp_path, max_epochs=3)
    trainer.fit(Short(), loader(16, 4))
    assert (trainer.global_step, counter.train_batches, counter.epochs) == (3, 3, 3)  # one batch per epoch
    assert counter in trainer.callbacks
