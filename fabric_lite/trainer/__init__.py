"""The optional structured loop: LightningModule, LightningDataModule, Trainer and callbacks, on the public Fabric API.

Same names as ``lightning.pytorch`` so that a script ports with an import swap::

    from fabric_lite.trainer import LightningModule, LightningDataModule, Trainer, seed_everything
    from fabric_lite.trainer.callbacks import ModelCheckpoint, EarlyStopping
    from fabric_lite.trainer.profilers import SimpleProfiler
"""

from fabric_lite.trainer.callbacks import Callback
from fabric_lite.trainer.datamodule import LightningDataModule
from fabric_lite.trainer.module import LightningModule
from fabric_lite.trainer.trainer import Trainer
from fabric_lite.trainer.tuner import Tuner
from fabric_lite.utilities.seed import seed_everything

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "Tuner", "seed_everything"]
