"""DistributedDataParallel: one process per device, gradients all-reduced in backward (processes: ``parallel.py``)."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fabric_lite.errors import ConfigurationError
from fabric_lite.strategies.parallel import (  # noqa: F401  the names Lightning users import from the DDP module
    DEFAULT_TIMEOUT,
    PROCESS_ARGUMENTS,
    ParallelStrategy,
    StartMethod,
    check_timeout,
)


class DDPStrategy(ParallelStrategy):
    """Data-parallel training with ``torch.nn.parallel.DistributedDataParallel``.

    Args:
        accelerator, parallel_devices, cluster_environment, precision, process_group_backend, timeout,
            start_method, num_nodes: the process arguments of ``ParallelStrategy`` (filled in by the plan when omitted).
        **kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters``, ``static_graph``,
            ``bucket_cap_mb``, ``gradient_as_bucket_view``, ...).

    Example:
        >>> strategy = DDPStrategy(find_unused_parameters=True)  # doctest: +SKIP
    """

    name = "ddp"

    local_steps_under_no_sync = True  # no_sync: forward and backward stay on this rank

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{k: kwargs.pop(k) for k in PROCESS_ARGUMENTS if k in kwargs})
        self.ddp_kwargs = kwargs

    def setup_module(self, module: nn.Module) -> nn.Module:
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> ContextManager[Any]:
        if not isinstance(module, DistributedDataParallel):
            raise ConfigurationError(
                "fabric.no_backward_sync(model) under DDP needs the model returned by fabric.setup(...), "
                f"got a {type(module).__name__}. Fix: model = fabric.setup(model, optimizer)."
            )
        return module.no_sync() if enabled else contextlib.nullcontext()

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        return module.state_dict()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(start_method={self.start_method!r}, devices={len(self.parallel_devices)}, "
            f"num_nodes={self.num_nodes}, precision={self.precision.name!r})"
        )
