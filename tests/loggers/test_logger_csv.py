"""CSVLogger: the files on disk (read back with the csv/json/yaml readers), versions, prefixes, rank zero."""

from __future__ import annotations

import csv
import os
import signal
import time
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.loggers import CSVLogger, Logger
from fabric_lite.loggers.csv import load_hparams_from_yaml, save_hparams_to_yaml

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


def test_hyperparameters_file_is_always_yaml_and_loads_back(tmp_path: Path) -> None:
    import yaml

    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": torch.tensor(0.5), "optim": {"name": "sgd", "betas": (0.9, 0.99)}, "act": torch.relu})
    logger.log_hyperparams(Namespace(seed=7))
    expected = {"lr": 0.5, "optim": {"name": "sgd", "betas": [0.9, 0.99]}, "act": "relu", "seed": 7}

    assert logger.hparams_file == os.path.join(logger.log_dir, "hparams.yaml")
    assert sorted(os.listdir(logger.log_dir)) == ["hparams.yaml"]
    assert yaml.safe_load(Path(logger.hparams_file).read_text()) == expected
    assert load_hparams_from_yaml(logger.hparams_file) == expected
    save_hparams_to_yaml(tmp_path / "copy.yaml", Namespace(**expected))
    assert load_hparams_from_yaml(tmp_path / "copy.yaml") == expected
    with pytest.raises(ConfigurationError, match=r"load_hparams_from_yaml\('.*absent.yaml'\): no such file.*log_dir"):
        load_hparams_from_yaml(tmp_path / "absent.yaml")


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


def test_flushes_append_and_a_new_name_rewrites_once(tmp_path: Path) -> None:
    """Appending keeps the file's inode (no copy per flush); only a wider header replaces the file."""
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    for step in range(4):
        logger.log_metrics({"loss": float(step)}, step=step)
    path = Path(logger.log_dir) / "metrics.csv"
    inode = path.stat().st_ino
    for step in range(4, 10):
        logger.log_metrics({"loss": float(step)}, step=step)
    assert path.stat().st_ino == inode, "a flush with known names appends in place"
    logger.log_metrics({"loss": 10.0, "val,loss": 1.5}, step=10)  # a name that needs CSV quoting
    logger.save()
    assert path.stat().st_ino != inode, "a wider header is written to a new file moved into place"
    header, rows = read_rows(logger)
    assert header == ["step", "loss", "val,loss"]
    assert [(r["step"], r["loss"], r["val,loss"]) for r in rows] == [
        *((str(s), str(float(s)), "") for s in range(10)), ("10", "10.0", "1.5")
    ]
    assert sorted(os.listdir(logger.log_dir)) == ["metrics.csv"]


KILLED_CHILD = """
    import sys
    from fabric_lite.loggers import CSVLogger
    logger = CSVLogger(sys.argv[1], version=0, flush_logs_every_n_steps=7)
    step = 0
    while True:
        metrics = {"loss": step * 0.25, "lr": 1.0 / (step + 1)}
        if step >= 300:
            metrics["val_acc"] = step * 0.5  # widens the header once: one rewrite, then appends again
        logger.log_metrics(metrics, step=step)
        if step == 400:
            print("ready", flush=True)
        step += 1
"""


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_file_is_valid_csv_of_complete_rows_after_sigkill(tmp_path: Path, delay: float) -> None:
    """A real process logging as fast as it can is killed with SIGKILL; every row on disk is whole and right."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_CHILD), str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    data = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_bytes()
    assert data.endswith(b"\r\n"), "the file ends at a row boundary"
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["step", "loss", "lr", "val_acc"]
    assert len(rows) >= 400
    for expected_step, row in enumerate(rows):
        assert len(row) == 4, row
        step = int(row[0])
        assert step == expected_step
        assert (float(row[1]), float(row[2])) == (step * 0.25, 1.0 / (step + 1))
        assert row[3] == ("" if step < 300 else str(step * 0.5))
    assert [p.name for p in (tmp_path / "lightning_logs" / "version_0").iterdir()] == ["metrics.csv"]


def test_a_file_removed_while_logging_starts_again_with_a_header(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"x": 1.0}, step=0)
    os.remove(os.path.join(logger.log_dir, "metrics.csv"))
    with pytest.warns(UserWarning, match=r"metrics.csv was removed while logging; it starts again"):
        logger.log_metrics({"x": 2.0}, step=1)
    assert read_rows(logger) == (["step", "x"], [{"step": "1", "x": "2.0"}])
