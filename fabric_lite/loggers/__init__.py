"""Experiment loggers with Lightning Fabric's names: ``Logger``, ``CSVLogger``, ``TensorBoardLogger``.

tensorboardX is not imported here; ``TensorBoardLogger`` imports it when it first writes.
"""

from __future__ import annotations

from fabric_lite.loggers.base import Logger
from fabric_lite.loggers.csv import CSVLogger
from fabric_lite.loggers.default import default_logger
from fabric_lite.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "default_logger"]
