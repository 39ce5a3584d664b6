"""The logger a Trainer makes when given ``logger=True`` or no logger: TensorBoard if it can write events, else CSV."""

from __future__ import annotations

import os

from fabric_lite.loggers.base import Logger
from fabric_lite.loggers.csv import CSVLogger
from fabric_lite.loggers.tensorboard import TensorBoardLogger, tensorboard_backend
from fabric_lite.utilities.rank_zero import rank_zero_info


def default_logger(root_dir: str | os.PathLike[str]) -> Logger:
    """``TensorBoardLogger(root_dir)`` when tensorboardX or tensorboard is installed, else ``CSVLogger(root_dir)``.

    Both write to ``root_dir/lightning_logs/version_N``, as Lightning's default logger does, so
    ``self.logger.experiment.add_image(...)`` works in a LightningModule whenever TensorBoard can be written.

    Example:
        >>> import tempfile
        >>> type(default_logger(tempfile.mkdtemp())).__name__ in ("TensorBoardLogger", "CSVLogger")
        True
    """
    if tensorboard_backend() is not None:
        return TensorBoardLogger(root_dir)
    rank_zero_info(
        "The default logger is CSVLogger because neither tensorboard nor tensorboardX is installed; for "
        "TensorBoard logs (and logger.experiment.add_image) pip install 'torch-fabric-lite[tensorboard]' "
        "or pip install tensorboard."
    )
    return CSVLogger(root_dir)
