"""Every error the structured loop raises on purpose: what was asked, why it cannot work, and the fix (messages matched)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.errors import CheckpointError, ConfigurationError, UsageError
from fabric_lite.trainer import LightningDataModule, LightningModule, Trainer
from fabric_lite.trainer.callbacks import (
    EarlyStopping,
    GPUMemoryLogger,
    GradNormMonitor,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelCheckpoint(save_top_k=-2), r"save_top_k=-2\) is not an int >= -1"),
        (lambda: ModelCheckpoint(every_n_epochs=-1), r"every_n_epochs=-1\) is not an int >= 0"),
        (lambda: EarlyStopping(monitor="x", mode="low"), r"EarlyStopping\(mode='low'\) is not a known mode. Choose one of: min, max"),
        (lambda: EarlyStopping(monitor="x", patience=-1), r"patience=-1\) is not an int >= 0"),
        (lambda: StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=1.5), r"swa_epoch_start=1.5\) is neither an epoch"),
        (lambda: LearningRateMonitor(logging_interval="batch"), r"logging_interval='batch'\) is not known. Choose one of: None, 'step', 'epoch'"),
        (lambda: GradNormMonitor(norm_type=0), r"norm_type=0\) is not a p-norm order"),
        (lambda: GPUMemoryLogger(mode="max"), r"GPUMemoryLogger\(mode='max'\) is not known. Choose one of: all, min_max"),
        (lambda: LightningDataModule().train_dataloader(), r"LightningDataModule.train_dataloader\(\) is not defined"),
    ],
)
def test_constructor_and_definition_errors(make, message):
    with pytest.raises(ConfigurationError, match=message):
        make()


class Empty(LightningModule):
    pass


class Returns(Regressor):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def training_step(self, batch, batch_idx):
        return self.output


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.randn(4), torch.randn(1)


@pytest.mark.parametrize(
    ("run", "error", "message"),
    [
        (lambda t: t.fit(nn.Linear(2, 1), loader()), ConfigurationError, r"Trainer.fit\(model=Linear\) needs a fabric_lite.trainer.LightningModule"),
        (lambda t: t.fit(Empty(), loader()), ConfigurationError, "Empty has no configure_optimizers"),
        (lambda t: t.test(Empty(), loader()), ConfigurationError, r"Trainer.test needs Empty.test_step"),
        (lambda t: t.validate(), ConfigurationError, r"Trainer.validate\(\) got no model and this Trainer has not run one yet"),
        (lambda t: t.validate(Regressor()), ConfigurationError, r"Trainer.validate\(model\) found no data"),
        (lambda t: t.save_checkpoint("x.ckpt"), UsageError, "was called before any run set a model up"),
        (lambda t: t.fit(Returns({"acc": torch.tensor(1.0)}), loader()), ConfigurationError, r"returned a dict without 'loss' \(keys: acc\)"),
        (lambda t: t.fit(Returns("loss"), loader()), ConfigurationError, "training_step returned a str; automatic optimisation needs the loss"),
    ],
)
def test_run_errors(tmp_path, run, error, message):
    with pytest.raises(error, match=message):
        run(quiet_trainer(tmp_path, max_steps=2))


def test_errors_that_need_a_finished_fit(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck")])
    model = Regressor()
    trainer.fit(model, loader(4))
    with pytest.raises(CheckpointError, match=r"ckpt_path='last'\) has no last checkpoint to load: ModelCheckpoint saved none yet \(save_last is off\)"):
        trainer.test(model, loader(4), ckpt_path="last")

    class Predicting(Regressor):
        def predict_step(self, batch, batch_idx):
            self.log("p", 1.0)

    with pytest.raises(UsageError, match="prediction records no metrics. Fix: return the values"):
        trainer.predict(Predicting(), loader(4))
    with pytest.raises(ConfigurationError, match=r"val_check_interval=0.5\) is a fraction, but the training data has no length"):
        quiet_trainer(tmp_path, max_steps=2, val_check_interval=0.5).fit(model, DataLoader(Endless(), batch_size=2), loader(4))
    with pytest.raises(ConfigurationError, match=r"limit_train_batches=0.5\) is a fraction, but the dataloader has no length"):
        quiet_trainer(tmp_path, max_steps=2, limit_train_batches=0.5).fit(model, DataLoader(Endless(), batch_size=2))
    with pytest.raises(ConfigurationError, match=r"Trainer\(enable_checkpointing=False, callbacks=\[ModelCheckpoint\(...\)\]\) both"):
        Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[ModelCheckpoint()])

    class TwoOpt(Regressor):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1)], [{"scheduler": torch.optim.lr_scheduler.StepLR(
                torch.optim.SGD(self.parameters(), lr=0.1), 1), "when": "now"}]

    with pytest.raises(ConfigurationError, match=r"has unknown keys \['when'\]"):
        quiet_trainer(tmp_path, max_steps=1).fit(TwoOpt(), loader(4))

    class Swa(Regressor):
        def configure_optimizers(self):
            return {"optimizer": torch.optim.SGD(self.parameters(), lr=0.1),
                    "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(torch.optim.SGD(self.parameters(), lr=0.1), 1),
                                     "frequency": 0}}

    with pytest.raises(ConfigurationError, match=r"'frequency': 0 is not an int >= 1"):
        quiet_trainer(tmp_path, max_steps=1).fit(Swa(), loader(4))
    with pytest.raises(ConfigurationError, match="needs Trainer\\(max_epochs=...\\)"):
        quiet_trainer(tmp_path, max_steps=1, max_epochs=-1, callbacks=[StochasticWeightAveraging(swa_lrs=0.1)]).fit(Regressor(), loader(4))


def test_an_endless_loader_runs_to_max_steps(tmp_path):
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(Regressor(), DataLoader(Endless(), batch_size=2))
    assert trainer.global_step == 3 and trainer.num_training_batches == float("inf")


def test_every_raise_in_the_trainer_names_a_fix_or_the_choices():
    """Static check over fabric_lite/trainer: each error message built in place says 'Fix:' or lists the choices."""
    import ast
    from pathlib import Path

    import fabric_lite.trainer as package

    missing = []
    for path in Path(package.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            func = node.exc.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) == "bad":
                continue  # flags.bad(flag, value, why, fix) always writes "Fix: <fix>"
            texts = [n.value for n in ast.walk(node.exc.args[0]) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            if not texts:
                continue  # a helper builds the message (flags.bad adds "Fix:", choices_error lists the choices)
            joined = "".join(texts)
            if getattr(func, "id", "") == "AttributeError" and "has no attribute" in joined:
                continue  # a module's __getattr__ protocol answer (hasattr() and import machinery read it), not a user error
            if "Fix:" not in joined and "Choose one of" not in joined:
                missing.append(f"{path.name}:{node.lineno}: {joined[:80]}")
    assert not missing, "\n".join(missing)
