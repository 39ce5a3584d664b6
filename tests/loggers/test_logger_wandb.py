"""WandbLogger on the real wandb package in offline mode, read back from the run's own .wandb file.

wandb 0.2x+ has no Python reader for offline runs, so ``read_run`` below decodes the file: a 7-byte header
(``:W&B``, magic, version) then LevelDB's log format (32 KiB blocks; records of crc32, length, type), each record a
``wandb.proto.wandb_internal_pb2.Record``, the protobuf that ``wandb sync`` uploads.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from argparse import Namespace
from pathlib import Path

import logger_helpers
import pytest
import torch
from logger_helpers import run_as_rank_1
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError, MissingPackageError
from fabric_lite.loggers import Logger, WandbLogger
from fabric_lite.trainer import Trainer

wandb = pytest.importorskip("wandb", reason="WandbLogger needs wandb (extra: wandb)")


def fast_settings():
    """No console capture, git, code, system stats or machine info: an offline run then starts in about a second."""
    return wandb.Settings(console="off", disable_git=True, save_code=False, x_disable_stats=True,
                          x_disable_machine_info=True, silent=True)


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    yield
    finish()


def finish() -> None:
    """End the run and stop wandb's service process: ``wandb.finish()`` alone returns before the service has
    written everything to the .wandb file."""
    wandb.finish()
    wandb.teardown()


def read_run(save_dir: Path) -> dict:
    """The records of the one offline run under ``save_dir``: run info, config, history rows."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (save_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    run, config, rows = None, {}, []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            which = record.WhichOneof("record_type")
            if which == "run":
                run = record.run
            elif which == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif which == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return {"run": run, "config": config, "rows": rows}


def test_offline_run_round_trip(tmp_path: Path) -> None:
    logger = WandbLogger(name="first", save_dir=tmp_path, project="proj", offline=True, prefix="train",
                         settings=fast_settings())
    assert isinstance(logger, Logger)
    assert (logger.name, logger.version, logger.save_dir) == ("proj", None, str(tmp_path))
    logger.log_hyperparams({"lr": torch.tensor(0.5), "optim": {"name": "sgd", "betas": (0.9, 0.99)}, "act": torch.relu})
    logger.log_hyperparams(Namespace(seed=7))
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 1}, step=3)
    logger.log_metrics({"loss": 0.25}, step=7)
    logger.log_metrics({"loss": 0.125})  # no step: wandb's own counter only
    logger.log_image("samples", [torch.rand(3, 4, 4), torch.rand(3, 4, 4)], step=9, caption=["a", "b"])
    logger.log_text("notes", columns=["text"], data=[["hello"]], step=9)
    with pytest.raises(ConfigurationError, match=r"log_image\(caption=...\) needs a list with one value per image \(2\)"):
        logger.log_image("samples", [torch.rand(3, 4, 4)] * 2, caption=["only one"])
    run_id = logger.experiment.id
    assert logger.version == run_id
    copy = pickle.loads(pickle.dumps(logger))  # as a spawned process receives it: the run id, not the run
    assert copy._experiment is None and copy.version == run_id
    logger.finalize("success")
    assert logger.experiment is wandb.run, "finalize leaves the run open (as Lightning): test() after fit logs into it"
    finish()

    written = read_run(tmp_path)
    assert (written["run"].run_id, written["run"].project, written["run"].display_name) == (run_id, "proj", "first")
    assert written["config"] == {"lr": 0.5, "optim": {"name": "sgd", "betas": [0.9, 0.99]}, "act": "relu", "seed": 7}
    assert written["rows"] == [
        {"train-loss": 0.5, "train-acc": 1, "trainer/global_step": 3},
        {"train-loss": 0.25, "trainer/global_step": 7},
        {"train-loss": 0.125, "trainer/global_step": 7},  # step_sync=True: wandb repeats the last step
        *written["rows"][3:],
    ]
    images, text = written["rows"][3:]
    assert (images["trainer/global_step"], text["trainer/global_step"]) == (9, 9)
    assert (images["train-samples/_type"], images["train-samples/count"]) == ("images/separated", 2)
    assert images["train-samples/captions"] == ["a", "b"]
    assert (text["train-notes/_type"], text["train-notes/nrows"]) == ("table-file", 1)
    (files,) = (tmp_path / "wandb").glob("offline-run-*/files")
    assert json.loads((files / text["train-notes/path"]).read_text())["data"] == [["hello"]]
    assert all((files / name).is_file() for name in images["train-samples/filenames"])


class TinyModule(logger_helpers.TinyModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)  # logs train_loss
        self.logger.experiment.log({"custom": float(batch_idx)})  # the wandb run, as in Lightning's examples
        return loss


def test_under_the_trainer_then_fabric(tmp_path: Path) -> None:
    """WANDB_MODE=offline from the environment (no offline=True); Trainer first, then Fabric in a second run."""
    x = torch.rand(8, 4)
    trainer = Trainer(accelerator="cpu", devices=1, default_root_dir=str(tmp_path), max_epochs=1, log_every_n_steps=1,
                      logger=WandbLogger(save_dir=tmp_path / "trainer", settings=fast_settings()),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModule(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4))
    finish()
    written = read_run(tmp_path / "trainer")
    assert written["run"].project == "lightning_logs" and written["config"] == {"lr": 0.1}
    losses = [row for row in written["rows"] if "train_loss" in row]
    assert len(losses) == 2 and all(isinstance(row["trainer/global_step"], int) for row in losses)
    assert [row["custom"] for row in written["rows"] if "custom" in row] == [0.0, 1.0]

    fabric = Fabric(accelerator="cpu", devices=1, loggers=WandbLogger(dir=tmp_path / "fabric", save_dir=None,
                                                                      settings=fast_settings()))
    fabric.log_dict({"loss": torch.tensor(1.5)}, step=0)
    fabric.log("loss", 0.5, step=1)
    fabric.logger.finalize("success")
    finish()
    assert read_run(tmp_path / "fabric")["rows"] == [{"loss": 1.5, "trainer/global_step": 0},
                                                     {"loss": 0.5, "trainer/global_step": 1}]


def test_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"WandbLogger\(offline=True, log_model=True\) cannot work.*offline=False"):
        WandbLogger(offline=True, log_model=True)
    with pytest.raises(ConfigurationError, match=r"log_model='best'\) is not a known choice. Choose one of: False, True, 'all'"):
        WandbLogger(log_model="best")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingPackageError, match=r"WandbLogger needs the package 'wandb'.*pip install 'torch-fabric-lite\[wandb\]'"):
        WandbLogger()


def test_rank_nonzero_starts_no_run_and_writes_nothing(tmp_path: Path) -> None:
    code = f"""
        import sys
        from fabric_lite.loggers import WandbLogger
        logger = WandbLogger(save_dir={str(tmp_path)!r}, offline=True)
        logger.log_hyperparams({{"lr": 0.1}})
        logger.log_metrics({{"loss": 1.0}}, step=0)
        logger.experiment.log({{"direct": 1.0}})
        logger.finalize("success")
        print("wandb imported:", "wandb" in sys.modules, logger.version)
    """
    result = run_as_rank_1(code)  # asserts that it exits 0
    assert "wandb imported: False None" in result.stdout
    assert list(tmp_path.iterdir()) == []
