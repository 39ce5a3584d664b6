"""DataParallel: one process drives several CUDA GPUs, splitting each batch (``strategy="dp"``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fabric_lite.strategies.base import Strategy, device_arguments


class DataParallelStrategy(Strategy):
    """Wraps the module in ``torch.nn.DataParallel`` over ``parallel_devices``; batches go to the first device.

    Kept for parity with Lightning; DDP is faster even on one machine.
    """

    name = "dp"

    #: Lightning's positional order for DataParallelStrategy (precision before the environment).
    positional_arguments = ("accelerator", "parallel_devices", "precision", "cluster_environment")

    def __init__(self, *args: Any, **devices: Any) -> None:
        """Args: accelerator, parallel_devices, precision, cluster_environment (positional or keyword)."""
        given = device_arguments(type(self), self.positional_arguments, args, devices)
        parallel_devices = given.pop("parallel_devices", None)
        super().__init__(**given)
        self.parallel_devices = list(parallel_devices or [torch.device("cuda", 0)])

    @property
    def root_device(self) -> torch.device:
        return self.parallel_devices[0]

    def setup_module(self, module: nn.Module) -> nn.Module:
        return nn.DataParallel(module, device_ids=[d.index for d in self.parallel_devices])

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        return (module.module if isinstance(module, nn.DataParallel) else module).state_dict()
