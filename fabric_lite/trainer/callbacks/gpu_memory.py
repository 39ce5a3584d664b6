"""GPUMemoryLogger: log CUDA memory in MiB per device ("all") or the smallest and largest ("min_max") each step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

MODES = ("all", "min_max")


def gpu_memory_map() -> dict[str, float]:
    """MiB reserved by torch on each visible CUDA device (``torch.cuda.memory_reserved``); empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    return {f"gpu_id: {index}/memory.used (MB)": torch.cuda.memory_reserved(index) / 2**20 for index in range(torch.cuda.device_count())}


class GPUMemoryLogger(Callback):
    """``Trainer(log_gpu_memory="all" | "min_max")``: CUDA memory per device, or ``min_gpu_mem`` / ``max_gpu_mem``.

    Reads torch's own counters (no ``nvidia-smi`` call, so it does not slow the loop). Without CUDA it
    warns once and logs nothing.
    """

    def __init__(self, mode: str = "all") -> None:
        if mode not in MODES:
            raise ConfigurationError(f"GPUMemoryLogger(mode={mode!r}) is not known. Choose one of: all, min_max.")
        self.mode = mode
        if not torch.cuda.is_available():
            rank_zero_warn(f"log_gpu_memory={mode!r}: no CUDA device is available, so no GPU memory is logged.")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        memory = gpu_memory_map()
        if not memory:
            return
        if self.mode == "min_max":
            memory = {"min_gpu_mem": min(memory.values()), "max_gpu_mem": max(memory.values())}
        for name, value in memory.items():
            pl_module.log(name, value, on_step=True, on_epoch=False)
