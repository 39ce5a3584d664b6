"""XLA strategies with one replica per device: ``single_xla`` (one device) and ``xla`` (data parallel, torch_xla's launcher).

torch_xla is imported only inside methods that run on an XLA device, so registering or planning
these strategies works without it. Three XLA habits shape the code:

- Moving a module to an XLA device normally creates new Parameter objects (an XLA tensor cannot
  share a CPU tensor's storage), which would leave an optimizer made before ``setup`` pointing at
  the CPU copies and untie tied weights. The move swaps tensors in place instead
  (``torch.__future__.set_swap_module_params_on_conversion``), so parameters keep their identity.
- Checkpoints follow ``xm.save``: pending work is flushed, tensors are moved to the CPU, and only
  global rank 0 writes (atomically, as every fabric_lite checkpoint), so the file loads without torch_xla.
- In the ``xla`` strategy gradients are averaged over the replicas (``xm.reduce_gradients``) right
  before the optimizer step, or before clipping when clipping comes first.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.accelerators import Accelerator
from fabric_lite.checkpoint.io import atomic_save
from fabric_lite.checkpoint.state import to_saveable
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.environments.xla import XLAEnvironment
from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.precision.base import Precision
from fabric_lite.strategies.base import DEVICE_ARGUMENTS, Strategy, device_arguments, validate_reduce_op
from fabric_lite.utilities.apply_func import apply_to_collection

_XM_OPS = {"sum": "sum", "mean": "sum", "max": "max", "min": "min"}


# ----------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def swapping_parameters() -> Iterator[None]:
    """Inside the block ``module.to(device)`` keeps the Parameter objects (their contents are swapped)."""
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


def move_module(module: nn.Module, device: torch.device) -> nn.Module:
    """``module.to(device)`` keeping parameter identity (optimizers made before setup stay valid)."""
    import torch_xla  # noqa: F401  registers the XLA backend with torch

    with swapping_parameters():
        return module.to(device)


def to_cpu(data: Any) -> Any:
    """Every XLA tensor of a collection copied to the CPU (others kept), as ``xm.save`` does before writing."""
    return apply_to_collection(data, torch.Tensor, lambda t: t.cpu() if t.device.type == "xla" else t)


def sync() -> None:
    """Run the pending lazy XLA graph (``torch_xla.sync()``, formerly ``xm.mark_step()``)."""
    import torch_xla

    torch_xla.sync()


def save_from_rank_zero(strategy: Strategy, path: str | Path, state: dict[str, Any], filter: Any) -> None:
    """``xm.save`` semantics: flush pending work everywhere, then global rank 0 writes CPU copies atomically."""
    sync()
    if strategy.is_global_zero:
        atomic_save(to_cpu(to_saveable(state, strategy, filter=filter)), path)


# ------------------------------------------------------------------------------------ single_xla
class SingleDeviceXLAStrategy(Strategy):
    """One process on one XLA device (a TPU core, or XLA's CPU device under ``PJRT_DEVICE=CPU``).

    Args:
        device: the XLA device, ``torch.device("xla", 0)`` by default (an index is accepted too).
        accelerator, precision, cluster_environment: filled in by the plan when omitted.

    Example:
        >>> SingleDeviceXLAStrategy(device=0).root_device
        device(type='xla', index=0)
    """

    name = "single_xla"

    def __init__(
        self,
        device: torch.device | str | int = 0,
        *,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        cluster_environment: ClusterEnvironment | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision, cluster_environment=cluster_environment)
        if isinstance(device, int):
            device = torch.device("xla", device)
        self._root_device = torch.device(device)

    @property
    def root_device(self) -> torch.device:
        return self._root_device

    def setup_environment(self) -> None:
        import torch_xla  # noqa: F401  registers the XLA backend with torch (a plain torch.device("xla") needs it)

        super().setup_environment()

    def module_to_device(self, module: nn.Module) -> nn.Module:
        return move_module(module, self.root_device)

    def save_checkpoint(self, path: str | Path, state: dict[str, Any], filter: Any = None) -> None:
        save_from_rank_zero(self, path, state, filter)


# ------------------------------------------------------------------------------------------- xla
class XLAStrategy(Strategy):
    """Data parallel over XLA devices, one replica per device, started by ``torch_xla.launch``.

    Ranks come from the torch_xla runtime (``XLAEnvironment``); gradients are averaged with
    ``xm.reduce_gradients`` before each optimizer step; collectives are torch_xla's (``xm.all_reduce``,
    ``xm.all_gather``, ``xm.collective_broadcast``, ``xm.rendezvous``). ``fabric.launch(train)`` runs
    ``train(fabric)`` in every replica; with one device it runs in this process.

    Args:
        accelerator, parallel_devices, cluster_environment, precision: filled in by the plan (positional or keyword).
        sync_module_states: broadcast rank 0's parameters to every replica in ``setup`` (default True).
        start_method: ``"xla"``: the processes are made by torch_xla's launcher (the plan reads it).
        num_nodes: number of hosts.

    Example:
        >>> XLAStrategy().world_size  # before launch: the planned size
        1
    """

    name = "xla"

    positional_arguments = DEVICE_ARGUMENTS

    def __init__(
        self, *args: Any, sync_module_states: bool = True, start_method: str = "xla", num_nodes: int = 1, **devices: Any
    ) -> None:
        given = device_arguments(type(self), self.positional_arguments, args, devices)
        parallel_devices = given.pop("parallel_devices", None)
        super().__init__(**given)
        self.parallel_devices = list(parallel_devices) if parallel_devices else [torch.device("xla", 0)]
        self.num_nodes = num_nodes
        self.sync_module_states = sync_module_states
        self.start_method = start_method
        self._runtime = XLAEnvironment()
        self._launched = False
        # Threads that reduced their gradients already this step (clip before step): on XLA's CPU
        # device the replicas of one host are threads of one process sharing this object.
        self._reduced: set[int] = set()

    # ----------------------------------------------------------------- identity
    @property
    def root_device(self) -> torch.device:
        if not self._launched:
            raise UsageError(
                "The XLA device of Fabric(strategy='xla') was read before fabric.launch(): torch_xla starts its "
                "runtime at that moment, and its launcher refuses to start replicas after it. "
                "Fix: call fabric.launch(train) first and use fabric.device inside train(fabric)."
            )
        import torch_xla

        return torch_xla.device()

    @property
    def global_rank(self) -> int:
        return self._runtime.global_rank() if self._launched else 0

    @property
    def local_rank(self) -> int:
        return self._runtime.local_rank() if self._launched else 0

    @property
    def node_rank(self) -> int:
        return self._runtime.node_rank() if self._launched else 0

    @property
    def world_size(self) -> int:
        return self._runtime.world_size() if self._launched else len(self.parallel_devices) * self.num_nodes

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        self._launched = True
        super().setup_environment()

    def module_to_device(self, module: nn.Module) -> nn.Module:
        return move_module(module, self.root_device)

    def setup_module(self, module: nn.Module) -> nn.Module:
        if self.sync_module_states and self.world_size > 1:
            import torch_xla.core.xla_model as xm

            xm.broadcast_master_param(module)
        return module

    # --------------------------------------------------------- training steps
    def _reduce_gradients(self, optimizer: Optimizer) -> None:
        key = threading.get_ident()
        if key in self._reduced:
            return
        import torch_xla.core.xla_model as xm

        xm.reduce_gradients(optimizer)  # the mean over replicas; nothing to do in a world of one
        self._reduced.add(key)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        self._reduce_gradients(optimizer)
        self._reduced.discard(threading.get_ident())
        return self.precision.optimizer_step(optimizer, **kwargs)

    def clip_gradients_norm(
        self, module: nn.Module, optimizer: Optimizer, max_norm: float, norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        self._reduce_gradients(optimizer)  # clip the averaged gradients, not this replica's
        return super().clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)

    def clip_gradients_value(self, module: nn.Module, optimizer: Optimizer, clip_val: float) -> None:
        self._reduce_gradients(optimizer)
        super().clip_gradients_value(module, optimizer, clip_val)

    # -------------------------------------------------------------- collectives
    def barrier(self, name: str | None = None) -> None:
        if not self._launched:
            return
        import torch_xla.core.xla_model as xm

        xm.rendezvous(name or "fabric_lite.barrier")

    def all_reduce(self, tensor: torch.Tensor, group: Any | None = None, reduce_op: str | Any = "mean") -> torch.Tensor:
        validate_reduce_op(reduce_op)
        op = reduce_op.lower() if isinstance(reduce_op, str) else str(reduce_op).rsplit(".", 1)[-1].lower()
        if op not in _XM_OPS:
            asked = repr(reduce_op) if isinstance(reduce_op, str) else f"ReduceOp.{op.upper()}"
            raise ConfigurationError(
                f"all_reduce(reduce_op={asked}) has no torch_xla equivalent. Choose one of: {', '.join(_XM_OPS)}."
            )
        import torch_xla.core.xla_model as xm

        tensor = tensor.to(self.root_device)
        scale = 1.0 / self.world_size if op == "mean" else 1.0
        if not torch.is_floating_point(tensor) and op == "mean":
            tensor = tensor.float()
        return xm.all_reduce(_XM_OPS[op], tensor, scale=scale, groups=group)

    def all_gather(
        self, tensor: torch.Tensor, group: Any | None = None, sync_grads: bool = False, *, same_shape: bool = False
    ) -> torch.Tensor:
        tensor = tensor.to(self.root_device).unsqueeze(0)
        if sync_grads:
            import torch_xla.core.functions as xf

            return xf.all_gather(tensor, dim=0)
        import torch_xla.core.xla_model as xm

        return xm.all_gather(tensor.detach(), dim=0, groups=group)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send any picklable object from replica ``src``: its bytes travel as a tensor (length first)."""
        import torch_xla.core.xla_model as xm

        device = self.root_device
        payload = b""
        if self.global_rank == src:
            buffer = io.BytesIO()
            torch.save(to_cpu(obj), buffer)
            payload = buffer.getvalue()
        length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
        xm.collective_broadcast([length], root_ordinal=src)
        size = int(length.item())
        data = torch.zeros(size, dtype=torch.uint8)
        if payload:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        data = data.to(device)
        xm.collective_broadcast([data], root_ordinal=src)
        # The bytes come from replica `src` of this job, which pickled them itself a moment ago.
        result = torch.load(io.BytesIO(data.cpu().numpy().tobytes()), weights_only=False)
        return apply_to_collection(result, torch.Tensor, lambda t: t.to(device))

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        votes = self.all_reduce(torch.tensor(int(decision)), reduce_op="sum")
        return bool(votes.item() == self.world_size) if all else bool(votes.item() > 0)

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(
        self, path: str | Path, state: dict[str, Any], filter: dict[str, Callable[[str, Any], bool]] | None = None
    ) -> None:
        save_from_rank_zero(self, path, state, filter)

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> AbstractContextManager[Any]:
        # Gradients are averaged only at the optimizer step: accumulating steps need nothing skipped.
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(devices={len(self.parallel_devices)}, precision={self.precision.name!r})"
