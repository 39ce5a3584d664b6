"""``fabric_lite.trainer.loggers`` mirrors ``lightning.pytorch.loggers``: the same classes, clear errors for the rest."""

from __future__ import annotations

import pytest

import fabric_lite.loggers as fabric_loggers


def test_same_classes_as_fabric_lite_loggers() -> None:
    from fabric_lite.trainer.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

    assert (CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger) == (
        fabric_loggers.CSVLogger, fabric_loggers.Logger, fabric_loggers.MLFlowLogger,
        fabric_loggers.TensorBoardLogger, fabric_loggers.WandbLogger)


@pytest.mark.parametrize("name", ["CometLogger", "NeptuneLogger"])
def test_loggers_not_provided_say_so(name: str) -> None:
    with pytest.raises(ImportError, match=rf"does not provide Lightning's {name}. Fix: use one of CSVLogger, "
                                          r"MLFlowLogger, TensorBoardLogger or WandbLogger"):
        exec(f"from fabric_lite.trainer.loggers import {name}")
    with pytest.raises(ImportError, match=r"cannot import name 'NoSuchLogger'"):
        exec("from fabric_lite.trainer.loggers import NoSuchLogger")
