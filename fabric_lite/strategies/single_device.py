"""The single-device strategy: one process on one device, no wrapping, no communication."""

from __future__ import annotations

import torch

from fabric_lite.accelerators import Accelerator
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.precision.base import Precision
from fabric_lite.strategies.base import Strategy


class SingleDeviceStrategy(Strategy):
    """Runs everything on ``device``.

    Example:
        >>> SingleDeviceStrategy(device="cpu").root_device
        device(type='cpu')
    """

    name = "single_device"

    def __init__(
        self,
        device: torch.device | str | int = "cpu",
        *,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        cluster_environment: ClusterEnvironment | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision, cluster_environment=cluster_environment)
        self._root_device = torch.device(device) if not isinstance(device, torch.device) else device

    @property
    def root_device(self) -> torch.device:
        return self._root_device
