"""Several dataloaders as Lightning users pass them: a list / dict of training loaders (combined-loader modes), several
validation and test loaders with ``dataloader_idx``, and ``CombinedLoader`` used directly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trainer_helpers import Regressor, quiet_trainer

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks import Callback, ModelCheckpoint
from fabric_lite.trainer.utilities.combined_loader import CombinedLoader
from fabric_lite.wrappers import FabricDataLoader


def numbered(n: int, batch_size: int, offset: float = 0.0, shuffle: bool = False) -> DataLoader:
    """Samples whose feature 0 is their index (+ offset), so a batch tells where it came from."""
    x = torch.zeros(n, 4)
    x[:, 0] = torch.arange(n, dtype=torch.float32) + offset
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size, shuffle=shuffle)


def ids(batch: Any) -> Any:
    """The sample numbers in a batch ([x, y]), a list of batches or a dict of them (None stays None)."""
    if batch is None:
        return None
    if isinstance(batch, dict):
        return {k: ids(v) for k, v in batch.items()}
    if isinstance(batch[0], torch.Tensor):
        return batch[0][:, 0].long().tolist()
    return [ids(b) for b in batch]


class TwoLoaders(Regressor):
    """training_step gets one batch of each loader: a list or a dict, as in Lightning."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(ids(batch))
        parts = batch.values() if isinstance(batch, dict) else batch
        losses = [nn.functional.mse_loss(self(x), y) for x, y in (p for p in parts if p is not None)]
        return torch.stack(losses).mean()


def test_combined_loader_modes_lengths_and_errors():
    iterables = {"a": DataLoader(range(6), batch_size=4), "b": DataLoader(range(15), batch_size=5)}
    got = {}
    for mode in ("max_size_cycle", "max_size", "min_size", "sequential"):
        combined = CombinedLoader(iterables, mode)
        got[mode] = (len(combined), [(_plain(b), i, d) for b, i, d in combined])
    assert got["max_size_cycle"] == (3, [({"a": [0, 1, 2, 3], "b": [0, 1, 2, 3, 4]}, 0, 0), ({"a": [4, 5], "b": [5, 6, 7, 8, 9]}, 1, 0),
                                         ({"a": [0, 1, 2, 3], "b": [10, 11, 12, 13, 14]}, 2, 0)])
    assert got["max_size"][1][2] == ({"a": None, "b": [10, 11, 12, 13, 14]}, 2, 0)
    assert got["min_size"] == (2, got["max_size_cycle"][1][:2])
    assert got["sequential"] == (5, [([0, 1, 2, 3], 0, 0), ([4, 5], 1, 0), ([0, 1, 2, 3, 4], 0, 1), ([5, 6, 7, 8, 9], 1, 1),
                                     ([10, 11, 12, 13, 14], 2, 1)])
    assert CombinedLoader([DataLoader(range(4), batch_size=2)] * 2, "min_size").sampler[0] is not None  # Lightning's attributes
    limited = CombinedLoader(iterables, "sequential")
    limited.limits = 1
    assert len(limited) == 2 and [d for _, _, d in limited] == [0, 1]
    unsized = CombinedLoader([iter(range(3)), DataLoader(range(4), batch_size=2)], "max_size")
    assert unsized.length() == float("inf") and [b[0] for b, _, _ in unsized] == [0, 1, 2]
    with pytest.raises(TypeError, match=r"len\(CombinedLoader\) is unknown.*Fix: use combined.length\(\)"):
        len(unsized)
    with pytest.raises(ConfigurationError, match=r"mode='zip'\) is not a known mode. Choose one of: min_size, max_size_cycle, max_size, sequential"):
        CombinedLoader(iterables, "zip")
    with pytest.raises(ConfigurationError, match=r"limits got 3 values for 2 iterables"):
        limited.limits = [1, 2, 3]
    with pytest.raises(ConfigurationError, match=r"flattened = <1 iterables>, but it holds 2"):
        limited.flattened = [iterables["a"]]


def _plain(batch: Any) -> Any:
    if isinstance(batch, dict):
        return {k: _plain(v) for k, v in batch.items()}
    return None if batch is None else batch.tolist()


def test_list_of_training_loaders_cycles_the_shorter_by_default(tmp_path):
    model = TwoLoaders()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, [numbered(4, 2), numbered(6, 2, offset=100)])
    assert trainer.num_training_batches == 3
    assert model.seen == [[[0, 1], [100, 101]], [[2, 3], [102, 103]], [[0, 1], [104, 105]]]
    # each loader went through Fabric's setup_dataloaders; trainer.train_dataloader keeps the collection's shape
    assert isinstance(trainer.train_dataloader, list) and all(isinstance(d, FabricDataLoader) for d in trainer.train_dataloader)


@pytest.mark.parametrize(("mode", "expected"), [
    ("min_size", [{"a": [0, 1], "b": [100, 101]}, {"a": [2, 3], "b": [102, 103]}]),
    ("max_size", [{"a": [0, 1], "b": [100, 101]}, {"a": [2, 3], "b": [102, 103]}, {"a": None, "b": [104, 105]}]),
    ("max_size_cycle", [{"a": [0, 1], "b": [100, 101]}, {"a": [2, 3], "b": [102, 103]}, {"a": [0, 1], "b": [104, 105]}]),
])
def test_combined_loader_modes_in_fit(tmp_path, mode, expected):
    model = TwoLoaders()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, CombinedLoader({"a": numbered(4, 2), "b": numbered(6, 2, offset=100)}, mode))
    assert model.seen == expected
    assert trainer.num_training_batches == len(expected)


def test_limit_train_batches_applies_per_loader_as_in_lightning(tmp_path):
    model = TwoLoaders()
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2).fit(model, {"a": numbered(2, 2), "b": numbered(10, 2, offset=100)})
    assert model.seen == [{"a": [0, 1], "b": [100, 101]}, {"a": [0, 1], "b": [102, 103]}]
    model = TwoLoaders()
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=0.5)
    trainer.fit(model, [numbered(8, 2), numbered(12, 2, offset=100)])  # limits 2 and 3: max_size_cycle runs 3
    assert trainer.num_training_batches == 3 and len(model.seen) == 3


def test_sequential_training_is_refused_naming_the_modes(tmp_path):
    with pytest.raises(ConfigurationError, match=r"does not support the 'sequential' mode.*Choose one of: min_size, max_size_cycle, max_size"):
        quiet_trainer(tmp_path, max_epochs=1).fit(TwoLoaders(), CombinedLoader([numbered(4, 2), numbered(4, 2)], "sequential"))


class SeveralVal(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, int, list[int]]] = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("val", batch_idx, dataloader_idx, ids(batch)))
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))
        self.log("first", x[:, 0].min(), reduce_fx="min")

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("test", batch_idx, dataloader_idx, ids(batch)))
        self.log("test_size", float(len(batch[0])), reduce_fx="sum")


class HookIdx(Callback):
    def __init__(self) -> None:
        self.starts: list[tuple[int, int]] = []
        self.ends: list[tuple[int, int]] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.starts.append((batch_idx, dataloader_idx))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.ends.append((batch_idx, dataloader_idx))


def test_several_validation_and_test_loaders_run_in_turn_with_dataloader_idx(tmp_path):
    model, hooks = SeveralVal(), HookIdx()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[hooks])
    trainer.fit(model, numbered(4, 2), {"small": numbered(2, 2, offset=10), "big": numbered(4, 2, offset=20)})
    assert [c[1:] for c in model.calls] == [(0, 0, [10, 11]), (0, 1, [20, 21]), (1, 1, [22, 23])]
    assert hooks.starts == hooks.ends == [(0, 0), (0, 1), (1, 1)]
    metrics = trainer.callback_metrics
    assert {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"} <= set(metrics) and "val_loss" not in metrics
    assert (float(metrics["first/dataloader_idx_0"]), float(metrics["first/dataloader_idx_1"])) == (10.0, 20.0)
    model.calls.clear()
    results = trainer.test(model, [numbered(3, 2), numbered(5, 2, offset=50)], verbose=False)
    assert results == [{"test_size/dataloader_idx_0": 3.0}, {"test_size/dataloader_idx_1": 5.0}]
    assert [c[2] for c in model.calls] == [0, 0, 1, 1, 1]
    # one loader in a list: no dataloader_idx, no suffix (Lightning's rule)
    (single,) = trainer.validate(model, [numbered(2, 2)], verbose=False)
    assert set(single) == {"val_loss", "first"}


def test_combined_loader_as_validation_loader_gives_combined_batches(tmp_path):
    class CombinedVal(Regressor):
        def __init__(self):
            super().__init__()
            self.seen = []

        def validation_step(self, batch, batch_idx):
            self.seen.append((batch_idx, ids(batch)))
            self.log("n", float(len(batch["a"][0])), reduce_fx="sum")

    model = CombinedVal()
    (result,) = quiet_trainer(tmp_path).validate(model, CombinedLoader({"a": numbered(4, 2), "b": numbered(2, 2, offset=10)}, "max_size_cycle"),
                                                 verbose=False)
    assert model.seen == [(0, {"a": [0, 1], "b": [10, 11]}), (1, {"a": [2, 3], "b": [10, 11]})]
    assert result == {"n": 4.0}


def test_mid_epoch_resume_with_two_shuffled_training_loaders_ends_equal(tmp_path):
    def data():
        return [numbered(12, 2, shuffle=True), numbered(6, 2, offset=100, shuffle=True)]

    torch.manual_seed(1)
    saver = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=4, save_top_k=-1)
    uninterrupted = TwoLoaders()
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[saver]).fit(uninterrupted, data())
    resumed = TwoLoaders()
    torch.manual_seed(123)  # a different random state: the checkpoint's must be restored
    quiet_trainer(tmp_path, max_epochs=2).fit(resumed, data(), ckpt_path=tmp_path / "ck" / "epoch=0-step=4.ckpt")
    assert resumed.seen == uninterrupted.seen[4:]  # the same batches, drawn in the same order, after batch 4 of epoch 0
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
