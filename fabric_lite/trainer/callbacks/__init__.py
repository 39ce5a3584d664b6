"""Built-in callbacks with Lightning's names: checkpoints, early stopping, SWA, LR and gradient-norm monitors, progress."""

from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.callbacks.checkpoint import ModelCheckpoint
from fabric_lite.trainer.callbacks.early_stopping import EarlyStopping
from fabric_lite.trainer.callbacks.gpu_memory import GPUMemoryLogger
from fabric_lite.trainer.callbacks.grad_norm import GradNormMonitor, grad_norm
from fabric_lite.trainer.callbacks.legacy import LRMilestones
from fabric_lite.trainer.callbacks.lr_monitor import LearningRateMonitor
from fabric_lite.trainer.callbacks.progress import ProgressBar
from fabric_lite.trainer.callbacks.swa import StochasticWeightAveraging

TQDMProgressBar = ProgressBar  # Lightning's name for the default bar

__all__ = [
    "Callback", "EarlyStopping", "GPUMemoryLogger", "GradNormMonitor", "LRMilestones", "LearningRateMonitor",
    "ModelCheckpoint", "ProgressBar", "StochasticWeightAveraging", "TQDMProgressBar", "grad_norm",
]
