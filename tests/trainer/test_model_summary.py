"""Model summary: the table enable_model_summary logs at fit start, ModelSummary(max_depth=...), summarize()."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
import torch
from torch import nn
from trainer_helpers import loader

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import LightningModule, Trainer
from fabric_lite.trainer.callbacks import ModelSummary, RichModelSummary
from fabric_lite.trainer.model_summary import ModelSummary as Summary
from fabric_lite.trainer.model_summary import get_human_readable_count, summarize


class AutoEncoder(LightningModule):
    """Lightning's basic autoencoder, reduced: an encoder and a decoder (Sequential), one frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.decoder = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))
        self.frozen = nn.Linear(3, 3)  # 12 parameters that do not train
        self.frozen.requires_grad_(False)
        self.frozen.eval()
        self.example_input_array = torch.zeros(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        return nn.functional.mse_loss(self(x), x)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture
def fabric_log():
    """What the fabric_lite logger prints (a handler of our own, whatever pytest did to the root logger)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("fabric_lite")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_summary_counts_every_layer_and_parameter():
    model = AutoEncoder()
    summary = summarize(model, max_depth=1)
    # encoder 4*8+8 + 8*2+2 = 58, decoder 2*8+8 + 8*4+4 = 60, frozen 12
    assert summary.layer_names == ["encoder", "decoder", "frozen"]
    assert summary.layer_types == ["Sequential", "Sequential", "Linear"]
    assert summary.param_nums == [58, 60, 12]
    assert (summary.total_parameters, summary.trainable_parameters) == (130, 118)
    assert summary.training_modes == [True, True, False]
    assert summary.model_size == pytest.approx(130 * 4 / 1e6)
    assert summary.in_sizes == [[5, 4], [5, 2], "?"] and summary.out_sizes == [[5, 2], [5, 4], "?"]
    text = str(summary)
    lines = text.splitlines()
    assert lines[0].split("|")[1:5] == [" Name    ", " Type       ", " Params ", " Mode  "]
    assert "0 | encoder | Sequential | 58     | train | [5, 4]   | [5, 2]" in text
    assert "2 | frozen  | Linear     | 12     | eval " in text
    for row in ("118       Trainable params", "12        Non-trainable params", "130       Total params",
                "0.001     Total estimated model params size (MB)", "9         Modules in train mode",
                "1         Modules in eval mode"):
        assert row in lines
    deep = Summary(model, max_depth=-1)
    assert deep.layer_names[:4] == ["encoder", "encoder.0", "encoder.1", "encoder.2"] and len(deep.layer_names) == 9
    assert Summary(model, max_depth=0).layer_names == [] and "130       Total params" in str(Summary(model, max_depth=0))
    assert Summary(model.to(torch.bfloat16), max_depth=1).model_size == pytest.approx(130 * 2 / 1e6)  # real dtype sizes


def test_lazy_and_partitioned_parameters():
    lazy = nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 1))
    assert summarize(lazy).param_nums == [0, 4]  # no size before the first forward, as Lightning counts it
    partitioned = nn.Linear(10, 10)
    partitioned.weight.ds_numel = 100  # DeepSpeed stage 3's full size of a parameter whose local tensor is a shard
    assert summarize(partitioned).total_parameters == 110


def test_lightning_import_path():
    from fabric_lite.trainer.utilities.model_summary import ModelSummary as ByPath
    from fabric_lite.trainer.utilities.model_summary import summarize as summarize_by_path

    assert ByPath is Summary and summarize_by_path is summarize


def test_human_readable_counts():
    assert [get_human_readable_count(n) for n in (0, 999, 1000, 123_456, 7_000_000, 2.5e9)] == [
        "0", "999", "1.0 K", "123.5 K", "7.0 M", "2.5 B"]


def test_fit_logs_the_summary_by_default_and_not_when_disabled(tmp_path, fabric_log, capsys):
    trainer = Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path), logger=False,
                      enable_checkpointing=False, enable_progress_bar=False)
    assert any(type(c) is ModelSummary and c.max_depth == 1 for c in trainer.callbacks)
    trainer.fit(AutoEncoder(), loader(8, 4))
    text = fabric_log.getvalue()
    assert "| Name    | Type       | Params | Mode " in text and "130       Total params" in text
    assert "encoder.0" not in text
    assert capsys.readouterr().out == ""  # a log record (stderr by default), not a print
    fabric_log.truncate(0)
    fabric_log.seek(0)
    trainer = Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path), logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert not any(isinstance(c, ModelSummary) for c in trainer.callbacks)
    trainer.fit(AutoEncoder(), loader(8, 4))
    assert "Total params" not in fabric_log.getvalue()


def test_model_summary_callback_max_depth(tmp_path, fabric_log):
    trainer = Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path), logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=[ModelSummary(max_depth=2)])
    assert len([c for c in trainer.callbacks if isinstance(c, ModelSummary)]) == 1  # the user's replaces the default
    trainer.fit(AutoEncoder(), loader(8, 4))
    text = fabric_log.getvalue()
    assert "1 | encoder.0 | Linear     | 40     | train" in text and "7 | decoder.2 | Linear     | 36     | train" in text


def test_rich_model_summary_draws_a_table(tmp_path):
    pytest.importorskip("rich")
    buffer = io.StringIO()
    callback = RichModelSummary(max_depth=1, console_kwargs={"file": buffer, "width": 120, "force_terminal": True},
                                header_style="bold red")
    trainer = Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path), logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=[callback])
    trainer.fit(AutoEncoder(), loader(8, 4))
    text = buffer.getvalue()
    assert "Sequential" in text and "encoder" in text and "Total params" in text and "118" in text
    assert "\x1b[1;31m" in text  # the header in the header_style asked for


def test_bad_max_depth_is_refused():
    with pytest.raises(ConfigurationError, match=r"ModelSummary\(max_depth=-2\) is not a depth. Fix: pass an int >= 0"):
        ModelSummary(max_depth=-2)
    with pytest.raises(ConfigurationError, match=r"ModelSummary\(max_depth='all'\) is not a depth"):
        summarize(nn.Linear(1, 1), max_depth="all")
    with pytest.raises(ConfigurationError, match=r"ModelSummary\(header_style=...\) got argument\(s\) it does not use. "
                                                 r"Fix: drop them \(it takes: none besides max_depth\)"):
        ModelSummary(header_style="bold")
