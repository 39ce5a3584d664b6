"""MLFlowLogger on the real mlflow(-skinny) package with a local file store, read back with mlflow's MlflowClient."""

from __future__ import annotations

import os
import pickle
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from logger_helpers import TinyModule, run_as_rank_1, tiny_data

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError, MissingPackageError
from fabric_lite.loggers import Logger, MLFlowLogger
from fabric_lite.trainer import Trainer
from fabric_lite.trainer.callbacks import ModelCheckpoint

pytest.importorskip("mlflow", reason="MLFlowLogger needs mlflow or mlflow-skinny (extra: mlflow)")


@pytest.fixture(autouse=True)
def _file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the logger sets it; undone after each test


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_metrics_params_tags_and_status_round_trip(tmp_path: Path) -> None:
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger("exp", run_name="first", tracking_uri=uri, tags={"team": "vision", "seed": 3}, prefix="train")
    assert isinstance(logger, Logger)
    logger.log_hyperparams({"lr": torch.tensor(0.5), "optim": {"name": "sgd", "betas": (0.9, 0.99)}, "long": "x" * 900})
    logger.log_hyperparams(Namespace(batch_size=32))
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 1}, step=3)
    logger.log_metrics({"loss": 0.25, "nested": {"top1": 0.75}}, step=7)
    copy = pickle.loads(pickle.dumps(logger))  # as a spawned process receives it: the run id, not the client
    assert copy._client is None and (copy._run_id, copy._experiment_id) == (logger.run_id, logger.experiment_id)
    logger.finalize("success")

    client = client_for(uri)
    run = client.get_run(logger.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    assert (logger.name, logger.version, logger.save_dir) == (run.info.experiment_id, run.info.run_id, str(tmp_path / "mlruns"))
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.5", "optim/name": "sgd", "optim/betas": "(0.9, 0.99)", "long": "x" * 500,
                               "batch_size": "32"}
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == {"team": "vision", "seed": "3"}
    assert run.data.tags["mlflow.runName"] == "first"
    assert history(client, logger.run_id, "train-loss") == [(3, 0.5), (7, 0.25)]
    assert history(client, logger.run_id, "train-acc") == [(3, 1.0)]
    assert history(client, logger.run_id, "train-nested/top1") == [(7, 0.75)]


def test_default_store_is_file_mlruns_in_the_working_folder_and_run_id_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = MLFlowLogger()
    first.log_metrics({"x": 1.0}, step=0)
    first.finalize("failed")
    assert first.save_dir == "./mlruns" and (tmp_path / "mlruns").is_dir()
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"

    again = MLFlowLogger(run_id=first.run_id)  # same experiment name: found, not made twice
    again.log_metrics({"x": 2.0}, step=1)
    again.finalize("aborted")
    client = client_for("file:./mlruns")
    assert again.experiment_id == first.experiment_id
    assert client.get_experiment_by_name("lightning_logs").experiment_id == first.experiment_id
    assert history(client, first.run_id, "x") == [(0, 1.0), (1, 2.0)]
    assert client.get_run(first.run_id).info.status == "KILLED"


def test_text_values_and_bad_names_warn(tmp_path: Path) -> None:
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(tracking_uri=uri)
    with pytest.warns(UserWarning, match=r"skips name='sgd': MLflow metrics are numbers"):
        logger.log_metrics({"name": "sgd", "ok": 1.0}, step=0)
    with pytest.warns(RuntimeWarning, match=r"logs 'val loss\(avg\)!' as 'val lossavg'"):
        logger.log_metrics({"val loss(avg)!": 2.0}, step=0)
    logger.finalize("success")
    assert client_for(uri).get_run(logger.run_id).data.metrics == {"ok": 1.0, "val lossavg": 2.0}


def test_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"log_model='best'\) is not a known choice. Choose one of: False, True, 'all'"):
        MLFlowLogger(log_model="best")
    with pytest.raises(ConfigurationError, match=r"save_dir=None\) has nowhere to write.*sqlite:///mlflow.db"):
        MLFlowLogger(save_dir=None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingPackageError,
                       match=r"MLFlowLogger needs the package 'mlflow'.*pip install 'torch-fabric-lite\[mlflow\]'.*mlflow-skinny"):
        MLFlowLogger(save_dir=tmp_path)


def test_under_the_trainer_with_checkpoints_as_artifacts(tmp_path: Path) -> None:
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(tracking_uri=uri, log_model=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    trainer = Trainer(accelerator="cpu", devices=1, default_root_dir=str(tmp_path), max_epochs=2, logger=logger,
                      log_every_n_steps=1, callbacks=[checkpoint], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModule(), tiny_data())
    assert trainer.logger is logger
    logger.after_save_checkpoint(checkpoint)  # the ModelCheckpoint hook; save_top_k=-1 logs every file at once

    client = client_for(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert len(client.get_metric_history(logger.run_id, "train_loss")) == 4
    folders = sorted(a.path for a in client.list_artifacts(logger.run_id, "checkpoints"))
    assert folders == ["checkpoints/epoch=0-step=2", "checkpoints/epoch=1-step=4"]
    assert sorted(a.path for a in client.list_artifacts(logger.run_id, folders[1])) == [
        f"{folders[1]}/epoch=1-step=4.ckpt", f"{folders[1]}/metadata.yaml"]


def test_with_fabric_log_dict(tmp_path: Path) -> None:
    uri = f"file:{tmp_path / 'mlruns'}"
    fabric = Fabric(accelerator="cpu", devices=1, loggers=MLFlowLogger(tracking_uri=uri, experiment_name="fabric"))
    fabric.log_dict({"loss": torch.tensor(1.5)}, step=0)
    fabric.log("loss", 0.5, step=1)
    fabric.logger.finalize("success")
    assert history(client_for(uri), fabric.logger.run_id, "loss") == [(0, 1.5), (1, 0.5)]


def test_rank_nonzero_writes_nothing(tmp_path: Path) -> None:
    code = f"""
        import sys
        from fabric_lite.loggers import MLFlowLogger
        logger = MLFlowLogger(tracking_uri="file:{tmp_path / 'mlruns'}")
        logger.log_hyperparams({{"lr": 0.1}})
        logger.log_metrics({{"loss": 1.0}}, step=0)
        logger.experiment.log_param("any", "call")
        logger.finalize("success")
        print("mlflow imported:", "mlflow" in sys.modules)
    """
    result = run_as_rank_1(code, unset=("MLFLOW_TRACKING_URI",))  # asserts that it exits 0
    assert "mlflow imported: False" in result.stdout
    assert list(tmp_path.iterdir()) == []
