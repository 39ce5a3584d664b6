"""Experiment loggers with Lightning's names: ``Logger``, ``CSVLogger``, ``TensorBoardLogger``, ``WandbLogger``,
``MLFlowLogger``.

No optional package (tensorboardX, tensorboard, wandb, mlflow) is imported here; each logger imports its package
when it first writes, and raises an error naming the install command when the package is absent.
"""

from __future__ import annotations

from fabric_lite.loggers.base import Logger
from fabric_lite.loggers.csv import CSVLogger
from fabric_lite.loggers.default import default_logger
from fabric_lite.loggers.mlflow import MLFlowLogger
from fabric_lite.loggers.tensorboard import TensorBoardLogger
from fabric_lite.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger", "default_logger"]
