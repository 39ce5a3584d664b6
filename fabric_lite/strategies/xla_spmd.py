"""SPMD over an XLA device mesh from one process: ``xla_spmd`` (data parallel) and ``xla_fsdp`` (FSDPv2).

This is the way torch_xla now recommends to use several devices: one program, written for the
whole batch, is partitioned by the XLA compiler (GSPMD) over a ``Mesh`` of all devices. Batches
are sharded along their first dimension (``xs.mark_sharding``) when they enter the model;
``xla_spmd`` keeps parameters replicated (the compiler inserts the gradient all-reduce), while
``xla_fsdp`` also shards every parameter with ``SpmdFullyShardedDataParallel`` (FSDPv2). Because
the program is the single-device program, results match a one-device run up to float rounding.
torch_xla is imported in ``setup_environment`` (``fabric.launch()``), which must come before any
XLA tensor exists: ``torch_xla.runtime.use_spmd()`` is called there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.strategies.base import DEVICE_ARGUMENTS, Strategy, device_arguments
from fabric_lite.strategies.xla import move_module, save_from_rank_zero
from fabric_lite.utilities.apply_func import apply_to_collection


class XLASPMDStrategy(Strategy):
    """One process drives all XLA devices of the host as one SPMD program over a 1-D device mesh.

    Args:
        accelerator, parallel_devices, cluster_environment, precision: filled in by the plan.
        fsdp: shard parameters too (FSDPv2, ``strategy="xla_fsdp"``); ``False`` replicates them
            (``strategy="xla_spmd"``).
        auto_wrap_policy: FSDPv2 only: wrap sub-modules separately (torch_xla's ``auto_wrap_policy``).
        num_nodes: must be 1 (a multi-host mesh is not supported here; the plan refuses more).

    Example:
        >>> XLASPMDStrategy(fsdp=True).name
        'xla_fsdp'
    """

    positional_arguments = DEVICE_ARGUMENTS

    def __init__(
        self, *args: Any, fsdp: bool = False, auto_wrap_policy: Callable[..., bool] | None = None, num_nodes: int = 1,
        **devices: Any,
    ) -> None:
        given = device_arguments(type(self), self.positional_arguments, args, devices)
        parallel_devices = given.pop("parallel_devices", None)
        super().__init__(**given)
        self.fsdp = fsdp
        self.name = "xla_fsdp" if fsdp else "xla_spmd"
        self.axis = "fsdp" if fsdp else "data"  # SpmdFullyShardedDataParallel requires an axis named "fsdp"
        self.auto_wrap_policy = auto_wrap_policy
        self.parallel_devices = list(parallel_devices) if parallel_devices else []
        self.num_nodes = num_nodes
        self._mesh: Any = None

    # ----------------------------------------------------------------- identity
    @property
    def root_device(self) -> torch.device:
        # The SPMD program runs on one virtual device that stands for the whole mesh.
        return torch.device("xla", 0)

    @property
    def mesh(self) -> Any:
        """The ``torch_xla.distributed.spmd.Mesh`` (after ``fabric.launch()``)."""
        if self._mesh is None:
            raise UsageError(
                f"Fabric(strategy={self.name!r}).strategy.mesh was read before fabric.launch(), which builds it. "
                f"Fix: call fabric.launch() first."
            )
        return self._mesh

    @property
    def num_devices(self) -> int:
        return int(self.mesh.size())

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        if self._mesh is not None:
            return
        import numpy as np
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr

        if not xr.is_spmd():  # once per process; a second call only warns
            xr.use_spmd()
        count = xr.global_runtime_device_count()
        if self.parallel_devices and len(self.parallel_devices) != count:
            raise ConfigurationError(
                f"Fabric(strategy={self.name!r}, devices={len(self.parallel_devices)}) would leave devices out, but "
                f"an SPMD mesh spans all {count} XLA devices of the host. Fix: devices={count} (or 'auto'); to use "
                f"fewer, make fewer visible (CPU_NUM_DEVICES on XLA's CPU device, TPU_VISIBLE_CHIPS on TPU)."
            )
        self._mesh = xs.Mesh(np.arange(count), (count,), (self.axis,))
        xs.set_global_mesh(self._mesh)
        super().setup_environment()

    def module_to_device(self, module: nn.Module) -> nn.Module:
        return move_module(module, self.root_device)

    def setup_module(self, module: nn.Module) -> nn.Module:
        if self.fsdp:
            from torch_xla.experimental.spmd_fully_sharded_data_parallel import SpmdFullyShardedDataParallel

            module = SpmdFullyShardedDataParallel(
                module, mesh=self.mesh, shard_output=self._shard_batch, auto_wrap_policy=self.auto_wrap_policy
            )
        return _ShardBatch(module, self._shard_batch)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        # Parameters are sharded in place (mark_sharding), so the optimizer's references stay valid.
        return optimizer

    def _shard_batch(self, data: Any, mesh: Any = None) -> Any:
        """Annotate every XLA tensor of ``data`` with at least one dimension to be split along its first one."""
        import torch_xla
        import torch_xla.distributed.spmd as xs

        mesh = self.mesh if mesh is None else mesh

        def shard(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.device.type == "xla" and tensor.dim() > 0 and not torch_xla._XLAC._get_xla_sharding_spec(tensor):
                xs.mark_sharding(tensor, mesh, (self.axis,) + (None,) * (tensor.dim() - 1))
            return tensor

        return apply_to_collection(data, torch.Tensor, shard)

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str | Path, state: dict[str, Any], filter: Any = None) -> None:
        # Reading a sharded tensor to the CPU gathers it: the file holds whole tensors, loadable anywhere.
        save_from_rank_zero(self, path, state, filter)

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        return _unwrap(module).state_dict()

    def __repr__(self) -> str:
        size = self._mesh.size() if self._mesh is not None else len(self.parallel_devices)
        return f"{type(self).__name__}(name={self.name!r}, devices={size}, precision={self.precision.name!r})"


class _ShardBatch(nn.Module):
    """Shards the tensors a model is called with along their first (batch) dimension, then calls it."""

    def __init__(self, module: nn.Module, shard: Callable[[Any], Any]) -> None:
        super().__init__()
        self.module = module
        self._shard = shard

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self._shard((args, kwargs))
        return self.module(*args, **kwargs)


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(module, _ShardBatch) or type(module).__name__ == "SpmdFullyShardedDataParallel":
        module = module.module
    return module
