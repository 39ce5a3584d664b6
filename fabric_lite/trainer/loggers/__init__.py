"""The loggers under the Trainer's import path, as ``lightning.pytorch.loggers`` offers them.

``from lightning.pytorch.loggers import WandbLogger`` becomes ``from fabric_lite.trainer.loggers import WandbLogger``;
the classes are the ones in :mod:`fabric_lite.loggers` (one implementation, two import paths). Lightning's
``CometLogger`` and ``NeptuneLogger`` are not provided: importing them raises an ImportError that says so.
"""

from __future__ import annotations

from typing import Any

from fabric_lite.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

__all__ = ["CSVLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]

_NOT_PROVIDED = ("CometLogger", "NeptuneLogger")


def __getattr__(name: str) -> Any:
    if name in _NOT_PROVIDED:
        raise ImportError(
            f"fabric_lite.trainer.loggers.{name}: fabric_lite does not provide Lightning's {name}. "
            "Fix: use one of CSVLogger, MLFlowLogger, TensorBoardLogger or WandbLogger, or write a Logger subclass that calls your "
            "service (log_metrics, log_hyperparams, name, version)."
        )
    raise AttributeError(f"module 'fabric_lite.trainer.loggers' has no attribute {name!r}")
