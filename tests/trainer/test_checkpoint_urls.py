"""The Trainer's ModelCheckpoint with an fsspec URL dirpath: top-k pruning, resume from the URL, loggers told of saves."""

from __future__ import annotations

import os

import fsspec
import pytest

from fabric_lite.trainer.callbacks import ModelCheckpoint
from fabric_lite.loggers.base import Logger

from trainer_helpers import Regressor, loader, quiet_trainer


@pytest.fixture
def store():
    fs = fsspec.filesystem("memory")
    root = f"/mc-{os.getpid()}-{id(fs)}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


class SaveRecorder(Logger):
    """A logger that records what after_save_checkpoint saw (as MLFlow/Wandb's log_model reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.seen.append((checkpoint_callback.best_model_path, checkpoint_callback.last_model_path))


def test_top_k_at_a_url_prunes_on_the_store_and_fit_resumes_from_the_url(tmp_path, store):
    fs, root = store
    url = f"memory://{root}"
    callback = ModelCheckpoint(dirpath=url, monitor="val_loss", save_top_k=1, save_last=True)
    recorder = SaveRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[callback], logger=recorder)
    trainer.fit(Regressor(), loader(16, 4), loader(8, 4))
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    assert len(names) == 2 and "last.ckpt" in names, names  # the best one and last: the other epochs' files pruned
    assert callback.best_model_path.startswith("memory://") and not list(tmp_path.rglob("*.ckpt"))
    assert len(recorder.seen) == 3 and recorder.seen[-1][1] == f"{url}/last.ckpt"

    resumed = quiet_trainer(tmp_path, max_epochs=4, callbacks=[ModelCheckpoint(dirpath=url, save_top_k=0)], logger=False)
    model = Regressor()
    resumed.fit(model, loader(16, 4), loader(8, 4), ckpt_path=f"{url}/last.ckpt")
    assert resumed.current_epoch == 4 and resumed.global_step == 16  # three epochs restored, one trained


def test_a_missing_url_checkpoint_is_refused_naming_the_path(tmp_path, store):
    _, root = store
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False)
    with pytest.raises(Exception, match=r"no such file or folder\. Fix: pass the path of a checkpoint"):
        trainer.fit(Regressor(), loader(8, 4), ckpt_path=f"memory://{root}/nothing.ckpt")
