"""CSVLogger: the files on disk (read back with the csv/json/yaml readers), versions, prefixes, rank zero."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.loggers import CSVLogger, Logger

REPO_ROOT = Path(__file__).resolve().parents[2]


def read_rows(logger: CSVLogger) -> tuple[list[str], list[dict[str, str]]]:
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def run_python(code: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def test_is_a_logger_with_lightning_layout(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp")
    assert isinstance(logger, Logger)
    assert logger.name == "exp"
    assert logger.version == 0
    assert logger.root_dir == str(tmp_path / "exp")
    assert logger.log_dir == str(tmp_path / "exp" / "version_0")
    assert logger.group_separator == "/"
    assert not (tmp_path / "exp").exists(), "nothing is written before the first save"


def test_metrics_round_trip(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"loss": 0.5, "acc": torch.tensor(0.25)}, step=10)
    logger.log_metrics({"loss": torch.tensor(0.125), "acc": 1}, step=20)
    logger.finalize("success")

    header, rows = read_rows(logger)
    assert header == ["step", "loss", "acc"]
    assert [(int(r["step"]), float(r["loss"]), float(r["acc"])) for r in rows] == [(10, 0.5, 0.25), (20, 0.125, 1.0)]
    assert os.listdir(logger.log_dir) == ["metrics.csv"], "no temporary file is left behind"


def test_step_defaults_to_number_of_rows_logged(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    for value in (1.0, 2.0, 3.0):
        logger.log_metrics({"x": value})
    logger.save()
    _, rows = read_rows(logger)
    assert [(r["step"], r["x"]) for r in rows] == [("0", "1.0"), ("1", "2.0"), ("2", "3.0")]


def test_new_metric_names_widen_the_header_without_losing_rows(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"train_loss": 1.0}, step=0)
    assert read_rows(logger)[0] == ["step", "train_loss"]
    logger.log_metrics({"val_loss": 2.0}, step=1)
    logger.log_metrics({"train_loss": 3.0, "val_loss": 4.0}, step=2)

    header, rows = read_rows(logger)
    assert header == ["step", "train_loss", "val_loss"]
    assert rows == [
        {"step": "0", "train_loss": "1.0", "val_loss": ""},
        {"step": "1", "train_loss": "", "val_loss": "2.0"},
        {"step": "2", "train_loss": "3.0", "val_loss": "4.0"},
    ]


def test_flushes_every_n_calls_and_on_save(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    metrics_file = Path(logger.log_dir) / "metrics.csv"
    logger.log_metrics({"x": 0.0}, step=0)
    assert not metrics_file.exists()
    logger.log_metrics({"x": 1.0}, step=1)
    assert len(read_rows(logger)[1]) == 2
    logger.log_metrics({"x": 2.0}, step=2)
    assert len(read_rows(logger)[1]) == 2
    logger.save()
    assert [r["x"] for r in read_rows(logger)[1]] == ["0.0", "1.0", "2.0"]


def test_prefix_and_nested_metrics(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": 0.5, "acc": {"top1": 0.9, "top5": 1.0}}, step=0)
    logger.save()
    header, rows = read_rows(logger)
    assert header == ["step", "train-loss", "train-acc/top1", "train-acc/top5"]
    assert rows[0]["train-acc/top1"] == "0.9"


def test_versions(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path)
    first.log_metrics({"x": 1.0})
    first.save()
    second = CSVLogger(tmp_path)
    assert (first.version, second.version) == (0, 1)

    (tmp_path / "lightning_logs" / "version_7").mkdir()
    (tmp_path / "lightning_logs" / "version_99").write_text("a file, not a version folder")
    (tmp_path / "lightning_logs" / "version_x").mkdir()
    assert CSVLogger(tmp_path).version == 8

    assert CSVLogger(tmp_path, version=3).log_dir == str(tmp_path / "lightning_logs" / "version_3")
    assert CSVLogger(tmp_path, version="baseline").log_dir == str(tmp_path / "lightning_logs" / "baseline")
    assert CSVLogger(tmp_path / "other", name=None).log_dir == str(tmp_path / "other" / "version_0")


def test_explicit_version_with_existing_file_is_replaced(tmp_path: Path) -> None:
    old = CSVLogger(tmp_path, version=0)
    old.log_metrics({"old": 1.0}, step=0)
    old.save()
    new = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="already exists; the first save"):
        new.log_metrics({"new": 2.0}, step=0)
    new.save()
    assert read_rows(new) == (["step", "new"], [{"step": "0", "new": "2.0"}])


def test_hyperparameters_file(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": torch.tensor(0.5), "optim": {"name": "sgd", "betas": (0.9, 0.99)}, "act": torch.relu})
    logger.log_hyperparams(Namespace(seed=7))
    expected = {"lr": 0.5, "optim": {"name": "sgd", "betas": [0.9, 0.99]}, "act": "relu", "seed": 7}

    try:
        import yaml
    except ImportError:
        assert os.path.basename(logger.hparams_file) == "hparams.json"
        loaded = json.loads(Path(logger.hparams_file).read_text())
    else:
        assert os.path.basename(logger.hparams_file) == "hparams.yaml"
        loaded = yaml.safe_load(Path(logger.hparams_file).read_text())
    assert loaded == expected


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"flush_logs_every_n_steps=0\) is not a positive int"):
        CSVLogger(tmp_path, flush_logs_every_n_steps=0)
    logger = CSVLogger(tmp_path)
    with pytest.raises(ConfigurationError, match=r"params must be a dict or an argparse.Namespace"):
        logger.log_hyperparams([("lr", 0.1)])
    with pytest.raises(ConfigurationError, match=r"tensor of shape \(2,\) for 'loss'.*loss.mean\(\)"):
        logger.log_metrics({"loss": torch.ones(2)})


def test_rank_nonzero_writes_nothing(tmp_path: Path) -> None:
    code = f"""
        from fabric_lite.loggers import CSVLogger
        logger = CSVLogger({str(tmp_path)!r}, flush_logs_every_n_steps=1)
        logger.log_hyperparams({{"lr": 0.1}})
        logger.log_metrics({{"loss": 1.0}}, step=0)
        logger.experiment.log_metrics({{"loss": 1.0}}, 0)
        logger.save()
        logger.finalize("success")
        print(logger.log_dir)
    """
    result = run_python(code, RANK="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("version_0")
    assert list(tmp_path.iterdir()) == []
