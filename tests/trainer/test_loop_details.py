"""Lightning's loop details that ported modules and data modules rely on (each a real fit)."""

from __future__ import annotations

import pytest
import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.loggers import CSVLogger
from fabric_lite.loggers.csv import load_hparams_from_yaml
from fabric_lite.trainer import LightningDataModule
from fabric_lite.trainer.callbacks import Callback

from trainer_helpers import Regressor, loader, quiet_trainer


class Data(LightningDataModule):
    def __init__(self, batch_size: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.moved: list[str] = []

    def train_dataloader(self):
        return loader(16, self.hparams.batch_size)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.moved.append("datamodule")
        return [t.to(device) * 1.0 for t in batch]


class ModuleThatAlsoMoves(Regressor):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.moved: list[str] = []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.moved.append("module")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def test_the_data_modules_own_transfer_hook_is_used_instead_of_the_modules(tmp_path):
    model, data = ModuleThatAlsoMoves(), Data()
    quiet_trainer(tmp_path, max_epochs=1).fit(model, datamodule=data)
    assert data.moved == ["datamodule"] * 4 and model.moved == []  # Lightning: the data module's override wins
    model = ModuleThatAlsoMoves()
    quiet_trainer(tmp_path, max_epochs=1).fit(model, loader(16, 4))
    assert model.moved == ["module"] * 4


def test_the_data_modules_hyperparameters_are_logged_with_the_modules(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(tmp_path, max_epochs=1, logger=logger).fit(Regressor(lr=0.05), datamodule=Data(batch_size=8))
    saved = load_hparams_from_yaml(tmp_path / "run" / "version_0" / "hparams.yaml")
    assert saved["batch_size"] == 8 and saved["lr"] == 0.05 and saved["optimizer"] == "sgd"


def test_clashing_hyperparameters_of_module_and_data_module_are_refused_naming_them(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    with pytest.raises(ConfigurationError, match=r"both saved the hyperparameters \['lr'\] with different values.*Fix: rename"):
        quiet_trainer(tmp_path, max_epochs=1, logger=logger).fit(Regressor(lr=0.05), datamodule=Data(lr=0.1))


class BarReader(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.progress_bar_metrics["loss_now"], float(outputs["loss"])))


class LogsOnBar(Regressor):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("loss_now", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss


def test_the_progress_bar_metrics_hold_this_steps_value_in_on_train_batch_end(tmp_path):
    reader = BarReader()
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[reader]).fit(LogsOnBar(), loader(16, 4))
    assert len(reader.seen) == 4
    for shown, loss in reader.seen:  # before: the previous step's value (and a KeyError at the first batch)
        assert shown == pytest.approx(loss, rel=1e-6)
    assert torch.tensor([s for s, _ in reader.seen]).unique().numel() == 4


class BuiltInConfigureModel(Regressor):
    """Lightning 2.1+'s style: layers made in configure_model, idempotently (fit, then test, call it again)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = None
        self.calls = 0

    def configure_model(self):
        self.calls += 1
        if self.head is not None:
            return
        self.head = torch.nn.Linear(1, 1)
        self.head_dtype = self.head.weight.dtype

    def forward(self, x):
        return self.head(self.layer(x))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))


@pytest.mark.parametrize("precision, dtype", [("32-true", torch.float32), ("64-true", torch.float64)])
def test_layers_made_in_configure_model_are_in_the_precisions_dtype_and_trained(tmp_path, precision, dtype):
    model = BuiltInConfigureModel()
    trainer = quiet_trainer(tmp_path, max_epochs=1, precision=precision)
    trainer.fit(model, loader(16, 4))
    assert model.head_dtype == dtype and model.head.weight.dtype == dtype
    # configure_optimizers ran after configure_model: the head's parameters are stepped
    assert model.calls == 1 and trainer.optimizers[0].param_groups[0]["params"][-1] is model.head.bias
    trainer.test(model, loader(8, 4))
    assert model.calls == 2 and "test_loss" in trainer.callback_metrics
