"""fit(ckpt_path=...) continues exactly: mid-epoch and at epoch ends, with shuffling, dropout, a scheduler and callbacks."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import Noisy, loader, quiet_trainer

from fabric_lite.errors import CheckpointError
from fabric_lite.trainer.callbacks import EarlyStopping, ModelCheckpoint


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run(tmp_path, name, *, max_epochs=3, ckpt_path=None, callbacks=()):
    torch.manual_seed(123)
    model = Noisy()
    trainer = quiet_trainer(tmp_path / name, max_epochs=max_epochs, callbacks=list(callbacks))
    trainer.fit(model, loader(24, 4, shuffle=True), loader(8, 4), ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize(("every", "checkpoint", "phase"), [
    (6, "epoch=0-step=6.ckpt", "batch_done"),  # after the last batch of epoch 0, its validation still to run
    (8, "epoch=1-step=8.ckpt", "batch_done"),  # 6 batches per epoch: step 8 is batch 2 of epoch 1
    (None, "epoch=0-step=6.ckpt", "in_epoch"),  # written by the end-of-epoch validation, before the epoch-end hooks
])
def test_resume_continues_exactly(tmp_path, every, checkpoint, phase):
    # save_on_train_epoch_end=False: the epoch-based save comes from the end-of-epoch validation (Lightning's default
    # saves at the training epoch end when validation runs once per epoch; resuming from there is in test_epoch_order)
    saver = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=every, save_top_k=-1, save_on_train_epoch_end=False)
    full_trainer, full = run(tmp_path, "full", callbacks=[saver])
    path = tmp_path / "ck" / checkpoint
    state = torch.load(path, weights_only=True)
    assert state["loops"]["phase"] == phase
    assert "train_dataloader" in state  # the set-up loader's position and random state (fabric_lite's stateful loaders)
    # checks after validation too: a checkpoint written inside the epoch-end validation does not hold val_loss, and
    # a check at the resumed epoch's end would miss it (lightning.pytorch 2.6.6 raises there as well)
    stopper = EarlyStopping(monitor="val_loss", patience=100, check_on_train_epoch_end=False)
    resumed_trainer, resumed = run(tmp_path, "resumed", ckpt_path=path, callbacks=[stopper])
    torch.testing.assert_close(weights(resumed), weights(full), rtol=0, atol=0)  # bit for bit
    assert resumed_trainer.global_step == full_trainer.global_step == 18
    assert resumed_trainer.current_epoch == 3
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(full_trainer.optimizers[0].param_groups[0]["lr"])


def test_resume_at_an_epoch_boundary_and_callback_state(tmp_path):
    trainer, _ = run(tmp_path, "a", max_epochs=2, callbacks=[EarlyStopping(monitor="val_loss", patience=7)])
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    stopper = EarlyStopping(monitor="val_loss", patience=7)
    resumed_trainer, _ = run(tmp_path, "b", max_epochs=3, ckpt_path=tmp_path / "end.ckpt", callbacks=[stopper])
    original = trainer.early_stopping_callback
    assert stopper.best_score <= original.best_score  # restored, then updated by one more epoch
    assert resumed_trainer.current_epoch == 3 and resumed_trainer.global_step == 18
    _, full = run(tmp_path, "c", max_epochs=3)
    torch.testing.assert_close(weights(resumed_trainer.lightning_module), weights(full), rtol=0, atol=0)


def test_resume_needs_a_trainer_checkpoint(tmp_path):
    trainer, _ = run(tmp_path, "a", max_epochs=1)
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    with pytest.raises(CheckpointError, match="has no Trainer state|cannot restore"):
        run(tmp_path, "b", ckpt_path=tmp_path / "weights.ckpt")
