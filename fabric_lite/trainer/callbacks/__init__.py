"""Built-in callbacks with Lightning's names (``lightning.pytorch.callbacks``): checkpoints, early stopping, SWA, LR and
gradient-norm monitors, progress bars, model summaries, the timer and the tuner's finders."""

from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.callbacks.checkpoint import ModelCheckpoint
from fabric_lite.trainer.callbacks.early_stopping import EarlyStopping
from fabric_lite.trainer.callbacks.finders import BatchSizeFinder, LearningRateFinder
from fabric_lite.trainer.callbacks.gpu_memory import GPUMemoryLogger
from fabric_lite.trainer.callbacks.grad_norm import GradNormMonitor, grad_norm
from fabric_lite.trainer.callbacks.legacy import LRMilestones
from fabric_lite.trainer.callbacks.lr_monitor import LearningRateMonitor
from fabric_lite.trainer.callbacks.model_summary import ModelSummary, RichModelSummary
from fabric_lite.trainer.callbacks.progress import ProgressBar, TQDMProgressBar
from fabric_lite.trainer.callbacks.rich_progress import RichProgressBar, RichProgressBarTheme
from fabric_lite.trainer.callbacks.swa import StochasticWeightAveraging
from fabric_lite.trainer.callbacks.timer import Timer

__all__ = [
    "BatchSizeFinder", "Callback", "EarlyStopping", "GPUMemoryLogger", "GradNormMonitor", "LRMilestones",
    "LearningRateFinder", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary", "ProgressBar", "RichModelSummary",
    "RichProgressBar", "RichProgressBarTheme", "StochasticWeightAveraging", "TQDMProgressBar", "Timer", "grad_norm",
]
