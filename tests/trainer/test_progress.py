"""Progress bars: the real tqdm / rich output of fit (sanity check, epochs, validation), test and predict, captured."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_helpers import Regressor, loader

from fabric_lite.errors import ConfigurationError
from fabric_lite.loggers import CSVLogger
from fabric_lite.trainer import Trainer
from fabric_lite.trainer.callbacks import ProgressBar, RichProgressBar, RichProgressBarTheme, TQDMProgressBar


class TwoLoaderRegressor(Regressor):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx)


def bar_trainer(tmp_path, **kwargs):
    defaults = {"accelerator": "cpu", "devices": 1, "default_root_dir": str(tmp_path), "enable_checkpointing": False,
                "enable_model_summary": False, "max_epochs": 2}
    defaults.update(kwargs)
    return Trainer(**defaults)


def test_tqdm_bars_of_every_stage_with_metrics_and_version(tmp_path, capsys):
    tqdm = pytest.importorskip("tqdm")
    trainer = bar_trainer(tmp_path, logger=CSVLogger(tmp_path, name="runs", version=3))
    assert [type(c) for c in trainer.callbacks if isinstance(c, ProgressBar)] == [TQDMProgressBar]  # the default
    model = Regressor()
    trainer.fit(model, loader(16, 4), loader(8, 4))
    out = capsys.readouterr().out
    assert "Sanity Checking DataLoader 0: 100%" in out and "| 2/2 [" in out
    assert "Epoch 0: 100%" in out and "Epoch 1: 100%" in out and "| 4/4 [" in out
    assert out.count("Validation DataLoader 0: 100%") == 2  # once per epoch
    # the postfix: v_num (the logger's version) and the prog_bar=True metrics, with the values of the run
    last = out.rsplit("Epoch 1:", 1)[1]
    epoch_value = tqdm.tqdm.format_num(trainer.progress_bar_metrics["train_loss_epoch"])
    assert f"v_num=3, train_loss_step=" in last and f"train_loss_epoch={epoch_value}]" in last
    trainer.test(model, loader(12, 4), verbose=False)
    trainer.predict(model, loader(8, 4))
    out = capsys.readouterr().out
    assert "Testing DataLoader 0: 100%" in out and "| 3/3 [" in out
    assert "Predicting DataLoader 0: 100%" in out and "| 2/2 [" in out
    trainer.validate(TwoLoaderRegressor(), [loader(8, 4), loader(4, 4)], verbose=False)
    out = capsys.readouterr().out
    assert "Validation DataLoader 0: 100%" in out and "Validation DataLoader 1: 100%" in out and "| 1/1 [" in out


def test_refresh_rate_draws_every_nth_batch(tmp_path, capsys):
    pytest.importorskip("tqdm")
    trainer = bar_trainer(tmp_path, logger=False, max_epochs=1, callbacks=[TQDMProgressBar(refresh_rate=2)])
    trainer.fit(Regressor(), loader(20, 4))  # 5 batches: drawn at 2, 4 and the last
    out = capsys.readouterr().out
    assert re.search(r"\| 2/5 \[", out) and re.search(r"\| 4/5 \[", out) and re.search(r"\| 5/5 \[", out)
    assert not re.search(r"\| [13]/5 \[", out)


def test_leave_keeps_a_line_per_epoch(tmp_path, capsys):
    pytest.importorskip("tqdm")
    trainer = bar_trainer(tmp_path, logger=False, max_epochs=3, callbacks=[TQDMProgressBar(leave=True)])
    trainer.fit(Regressor(), loader(8, 4))
    out = capsys.readouterr().out
    assert all(f"Epoch {e}: 100%" in out for e in range(3)) and out.count("\n") >= 3


def test_no_bar_when_disabled_and_conflicting_bars_refused(tmp_path, capsys):
    trainer = bar_trainer(tmp_path, logger=False, enable_progress_bar=False)
    trainer.fit(Regressor(), loader(8, 4), loader(8, 4))
    assert capsys.readouterr().out == ""
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
    with pytest.raises(ConfigurationError, match=r"enable_progress_bar=False, callbacks=\[TQDMProgressBar\(...\)\]\) both turns"):
        bar_trainer(tmp_path, enable_progress_bar=False, callbacks=[TQDMProgressBar()])
    with pytest.raises(ConfigurationError, match=r"holds 2 progress bars \(TQDMProgressBar, ProgressBar\); only one can draw"):
        bar_trainer(tmp_path, callbacks=[TQDMProgressBar(), ProgressBar()])
    with pytest.raises(ConfigurationError, match=r"TQDMProgressBar\(refresh_rate=-1\) is not a number of batches"):
        TQDMProgressBar(refresh_rate=-1)
    with pytest.raises(ConfigurationError, match=r"ProgressBar\(plain=False\) asked for the tqdm bar.*Fix: TQDMProgressBar"):
        ProgressBar(plain=False)


def test_refresh_rate_zero_draws_nothing(tmp_path, capsys):
    pytest.importorskip("tqdm")
    trainer = bar_trainer(tmp_path, logger=False, max_epochs=1, callbacks=[TQDMProgressBar(refresh_rate=0)])
    trainer.fit(Regressor(), loader(8, 4), loader(8, 4))
    assert capsys.readouterr().out == ""


def test_rich_progress_bar_draws_every_stage(tmp_path):
    pytest.importorskip("rich")
    buffer = io.StringIO()
    bar = RichProgressBar(console_kwargs={"file": buffer, "force_terminal": True, "width": 160, "color_system": None})
    trainer = bar_trainer(tmp_path, logger=CSVLogger(tmp_path, name="runs", version=5), callbacks=[bar])
    assert bar in trainer.callbacks and not any(type(c) is TQDMProgressBar for c in trainer.callbacks)
    model = Regressor()
    trainer.fit(model, loader(16, 4), loader(8, 4))
    trainer.test(model, loader(8, 4), verbose=False)
    trainer.predict(model, loader(8, 4))
    text = buffer.getvalue()
    for expected in ("Sanity Checking DataLoader 0", "Epoch 0", "Epoch 1", "Validation DataLoader 0", "4/4", "v_num: 5",
                     "train_loss_step: ", "train_loss_epoch: ", "Testing DataLoader 0", "Predicting DataLoader 0"):
        assert expected in text, expected
    epoch_value = f"{trainer.progress_bar_metrics['train_loss_epoch']:.3f}"  # the theme's metrics_format
    assert f"train_loss_epoch: {epoch_value}" in text


def test_rich_theme_formats_the_metrics(tmp_path):
    pytest.importorskip("rich")
    buffer = io.StringIO()
    theme = RichProgressBarTheme(metrics_format=".6f", metrics_text_delimiter=" | ", progress_bar="red")
    bar = RichProgressBar(theme=theme, console_kwargs={"file": buffer, "force_terminal": True, "width": 200})
    trainer = bar_trainer(tmp_path, logger=False, max_epochs=1, callbacks=[bar])
    trainer.fit(Regressor(), loader(8, 4))
    text = buffer.getvalue()
    value = trainer.progress_bar_metrics["train_loss_epoch"]
    assert f"train_loss_step: {trainer.progress_bar_metrics['train_loss_step']:.6f} | train_loss_epoch: {value:.6f}" in text
    assert "\x1b[31m" in text  # the bar drawn in the theme's red
    from fabric_lite.trainer.callbacks import ModelSummary, RichModelSummary

    with_summary = bar_trainer(tmp_path, enable_model_summary=True, callbacks=[RichProgressBar()])
    assert [type(c) for c in with_summary.callbacks if isinstance(c, ModelSummary)] == [RichModelSummary]  # as Lightning


def test_lightning_progress_module_path():
    pytest.importorskip("rich")
    from fabric_lite.trainer.callbacks.progress import RichProgressBar as ByPath

    assert ByPath is RichProgressBar


def test_rich_missing_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)  # as if rich were not installed: `import rich` raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"RichProgressBar needs the rich package.*pip install rich.*torch-fabric-lite\[rich\]"):
        RichProgressBar()
    from fabric_lite.trainer.callbacks import RichModelSummary

    with pytest.raises(ModuleNotFoundError, match=r"RichModelSummary needs the rich package"):
        RichModelSummary()


def test_plain_progress_bar_prints_a_line_per_epoch(tmp_path, capsys):
    trainer = bar_trainer(tmp_path, logger=False, max_epochs=2, callbacks=[ProgressBar()])
    trainer.fit(Regressor(), loader(8, 4))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 2 and lines[1].startswith("Epoch 1: 2 batches, step 4  train_loss_step")


def test_only_rank_zero_draws_logs_and_reports_each_rank_profiles(tmp_path):
    """2 real DDP processes: one set of bars, one "Seed set to 7" and one summary; one profiler file per rank."""
    pytest.importorskip("tqdm")
    script = Path(__file__).parent / "_scripts" / "trainer_console_ranks.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["bar_enabled"] for r in reports] == [True, False] and reports[0]["step"] == reports[1]["step"] == 4
    # the fabric_lite logger prints INFO on stderr with logging left unconfigured, on rank 0 only
    assert result.stderr.splitlines().count("Seed set to 7") == 1 and result.stderr.count("Total params") == 1
    assert result.stdout.count("Sanity Checking DataLoader 0: 100%") == 1  # rank 1 has no bar to draw
    assert "Epoch 1: 100%" in result.stdout
    for rank in (0, 1):  # every rank profiles its own run, rank-suffixed as in Lightning
        assert "training_step" in (tmp_path / f"fit-perf-{rank}.txt").read_text()


def test_without_tqdm_the_default_is_the_plain_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed: `import tqdm` raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"TQDMProgressBar needs the tqdm package.*Fix: pip install tqdm"):
        TQDMProgressBar()
    trainer = bar_trainer(tmp_path, logger=False, max_epochs=1)
    assert [type(c) for c in trainer.callbacks if isinstance(c, ProgressBar)] == [ProgressBar]
    trainer.fit(Regressor(), loader(8, 4))
    assert capsys.readouterr().out.startswith("Epoch 0: 2 batches, step 2  train_loss_step")
