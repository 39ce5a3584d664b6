"""DataParallel: one process drives several CUDA GPUs, splitting each batch (``strategy="dp"``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fabric_lite.accelerators import Accelerator
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.precision.base import Precision
from fabric_lite.strategies.base import Strategy


class DataParallelStrategy(Strategy):
    """Wraps the module in ``torch.nn.DataParallel`` over ``parallel_devices``; batches go to the first device.

    Kept for parity with Lightning; DDP is faster even on one machine.
    """

    name = "dp"

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        precision: Precision | None = None,
        cluster_environment: ClusterEnvironment | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision, cluster_environment=cluster_environment)
        self.parallel_devices = list(parallel_devices or [torch.device("cuda", 0)])

    @property
    def root_device(self) -> torch.device:
        return self.parallel_devices[0]

    def setup_module(self, module: nn.Module) -> nn.Module:
        return nn.DataParallel(module, device_ids=[d.index for d in self.parallel_devices])

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        return (module.module if isinstance(module, nn.DataParallel) else module).state_dict()
