"""LightningModule / LightningDataModule code as Lightning 2.x users write it runs under fabric_lite.trainer (issue 15).

Each test is written the way Lightning's docs write the feature (signatures without batch_idx, the optimizer_step
warm-up override, manual optimization, save_hyperparameters on a data module, load_from_checkpoint, Ctrl-C),
run for real on CPU with a few batches.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import LightningModule, Trainer


def _trainer(tmp_path: Any, **kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, default_root_dir=str(tmp_path), enable_progress_bar=False, logger=False,
                    enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False)
    defaults.update(kwargs)
    return Trainer(**defaults)


def _data(n: int = 16, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def _loader(n: int = 16, batch_size: int = 4, seed: int = 0) -> DataLoader:
    return DataLoader(_data(n, seed), batch_size=batch_size)


class _Base(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.seen: list[tuple[Any, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


# ---------------------------------------------------------------------------------------------- 1. step signatures
class NoBatchIdx(_Base):
    """Every step without batch_idx (Lightning's GAN example writes training_step(self, batch))."""

    def training_step(self, batch):
        x, y = batch
        self.seen.append(("train",))
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch):
        self.seen.append(("val",))

    def test_step(self, batch):
        self.seen.append(("test",))

    def predict_step(self, batch):
        return self(batch[0])


def test_steps_without_batch_idx_run_in_fit_validate_test_and_predict(tmp_path):
    model = NoBatchIdx()
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, _loader(), _loader(8))
    trainer.validate(model, _loader(8), verbose=False)
    trainer.test(model, _loader(8), verbose=False)
    predictions = trainer.predict(model, _loader(8))
    assert model.seen == [("train",), ("train",), ("val",), ("val",), ("test",), ("test",)]  # limit_val_batches=1
    assert len(predictions) == 2 and predictions[0].shape == (4, 1)
    assert trainer.global_step == 2


class DataloaderIdx(_Base):
    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("val", batch_idx, dataloader_idx))

    def test_step(self, batch, batch_idx, dataloader_idx):  # required, as some users write it
        self.seen.append(("test", batch_idx, dataloader_idx))

    def predict_step(self, batch, *args):
        self.seen.append(("predict", *args))
        return self(batch[0])


def test_dataloader_idx_is_passed_with_several_loaders_and_defaults_to_0_with_one(tmp_path):
    model = DataloaderIdx()
    trainer = _trainer(tmp_path)
    trainer.validate(model, [_loader(4), _loader(8)], verbose=False)
    assert model.seen == [("val", 0, 0), ("val", 0, 1), ("val", 1, 1)]
    model.seen.clear()
    trainer.test(model, _loader(8), verbose=False)  # one loader, a required dataloader_idx: it is loader 0
    assert model.seen == [("test", 0, 0), ("test", 1, 0)]
    model.seen.clear()
    trainer.predict(model, [_loader(4), _loader(4)])
    assert model.seen == [("predict", 0, 0), ("predict", 0, 1)]


def test_several_loaders_and_a_step_without_dataloader_idx_is_refused_with_the_fix(tmp_path):
    model = NoBatchIdx()
    with pytest.raises(ConfigurationError, match=r"several val dataloaders, but NoBatchIdx.validation_step\(\) has no "
                                                 r"`dataloader_idx` argument.*def validation_step\(self, batch, batch_idx, "
                                                 r"dataloader_idx=0\)"):
        _trainer(tmp_path).validate(model, [_loader(4), _loader(4)], verbose=False)


def test_decorated_step_signature_is_read_through_functools_wraps(tmp_path):
    import functools

    def traced(fn):
        @functools.wraps(fn)
        def wrapper(self, *args):
            self.seen.append(("traced", len(args)))
            return fn(self, *args)
        return wrapper

    class Decorated(_Base):
        @traced
        def training_step(self, batch):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

    model = Decorated()
    _trainer(tmp_path, max_steps=1).fit(model, _loader())
    assert model.seen == [("traced", 1)]
