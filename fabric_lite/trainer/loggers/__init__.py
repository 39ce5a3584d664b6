"""The loggers under the Trainer's import path, as ``lightning.pytorch.loggers`` offers them.

``from lightning.pytorch.loggers import WandbLogger`` becomes ``from fabric_lite.trainer.loggers import WandbLogger``;
the classes are the ones in :mod:`fabric_lite.loggers` (one implementation, two import paths).
"""

from __future__ import annotations

from fabric_lite.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

__all__ = ["CSVLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
