"""Fabric: the facade users call. It resolves a Plan once, then delegates every call to the planned strategy.

Names and signatures follow Lightning Fabric (``lightning.fabric.Fabric``) so that a script moves
over with an import swap. Fabric never branches on a concrete strategy type: it asks the strategy.
The callback and logger methods are its base class's (``fabric_logging.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_lite import validation
from fabric_lite.accelerators import Accelerator
from fabric_lite.build import instantiate, make_launcher
from fabric_lite.checkpoint import orchestrate
from fabric_lite.fabric_logging import CallbacksAndLoggersMixin
from fabric_lite.launchers.base import Launcher
from fabric_lite.plan import Plan, resolve
from fabric_lite.precision.base import Precision
from fabric_lite.strategies.base import Strategy, validate_reduce_op
from fabric_lite.utilities.apply_func import move_data_to_device
from fabric_lite.utilities.collective_data import gather_collection, rank_zero_first, reduce_collection
from fabric_lite.utilities.distributed import any_rank
from fabric_lite.utilities.rank_zero import rank_zero_only, rank_zero_warn
from fabric_lite.utilities.seed import seed_everything as seed_processes
from fabric_lite.wrappers import (
    FabricModule, FabricOptimizer, setup_dataloader, setup_module_and_optimizers, unwrap, wrap_optimizer,
)


def _do_nothing(*_: Any, **__: Any) -> None:
    return None


def _as_list(value: Any) -> list[Any]:
    """None -> [], a list or tuple -> a list of its items, anything else -> a list of it."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class Fabric(CallbacksAndLoggersMixin):
    """Accelerate a raw PyTorch loop: devices, precision, strategies and launching from one object.

    Args:
        accelerator: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"xla"``, ``"gpu"``, ``"tpu"``, ``"auto"`` or an Accelerator.
        strategy: ``"auto"``, ``"single_device"`` (more in later releases) or a Strategy instance.
        devices: ``"auto"``, a count, ``-1`` for all, or device indices (``[0, 1]`` or ``"0,1"``), per node.
        num_nodes: number of machines.
        precision: ``"32-true"`` (default), ``"64-true"``, ``"16-mixed"``, ``"bf16-mixed"``, ``"16-true"``,
            ``"bf16-true"``, or an alias (``16``, ``"bf16"``, ``32``, ``64``, ...).
        plugins: a Precision plugin and/or a ClusterEnvironment instance.
        callbacks: objects whose methods :meth:`call` invokes by name.
        loggers: a logger or a list of loggers used by :meth:`log` and :meth:`log_dict`.

    Example:
        >>> fabric = Fabric(accelerator="cpu", devices=1)
        >>> model, optimizer = fabric.setup(torch.nn.Linear(2, 1), torch.optim.SGD(torch.nn.Linear(2, 1).parameters()))
        >>> fabric.world_size
        1
    """

    def __init__(
        self, *, accelerator: str | Accelerator = "auto", strategy: str | Strategy = "auto",
        devices: list[int] | str | int = "auto", num_nodes: int = 1, precision: str | int | None = None,
        plugins: Any = None, callbacks: list[Any] | Any | None = None, loggers: Any = None,
    ) -> None:
        self._plan = resolve(
            accelerator=accelerator, strategy=strategy, devices=devices, num_nodes=num_nodes, precision=precision,
            plugins=plugins,
        )
        self._strategy: Strategy = instantiate(self._plan)
        self._precision: Precision = self._strategy.precision
        self._plain_backward = self._strategy.plain_backward()
        self._callbacks = _as_list(callbacks)
        self._loggers = _as_list(loggers)
        self._models_setup = 0
        self._optimizers_setup = 0
        self._launched = False
        self._environment_ready = False
        self._launcher = make_launcher(self._plan)
        self._preemption = self._plan.preemption_instance
        if self._plan.launcher == "external":
            # fabric-run / torchrun / SLURM already made the processes: get ready now; launch() is then harmless.
            self._launcher.prepare_process()
            self._setup_environment()
            self._launched = True

    # ------------------------------------------------------------------------------ properties
    @property
    def plan(self) -> Plan:
        """The resolved plan (print it to see each choice and its reason)."""
        return self._plan

    @property
    def accelerator(self) -> Accelerator:
        return self._strategy.accelerator  # type: ignore[return-value]

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def launcher(self) -> Launcher:
        """The launcher of the plan (ask it, e.g. ``fabric.launcher.runs_function_in_new_processes``)."""
        return self._launcher

    @property
    def device(self) -> torch.device:
        """The device this process runs on."""
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    # ------------------------------------------------------------------------------ launching
    def launch(self, function: Callable[..., Any] = _do_nothing, *args: Any, **kwargs: Any) -> Any:
        """Start the processes the plan needs and run ``function(fabric, *args, **kwargs)`` in each.

        In one process (or when fabric-run/torchrun already made the processes) this prepares the
        device and calls ``function`` directly. Calling it twice is harmless.
        """
        validation.check_launch_function(function, given=function is not _do_nothing)
        if self._launched:
            # Processes exist already (fabric-run, torchrun, SLURM, or a second call): just run here.
            return None if function is _do_nothing else function(self, *args, **kwargs)
        self._launched = True
        return self._launcher.launch(None if function is _do_nothing else function, *args, fabric=self, **kwargs)

    def _setup_environment(self) -> None:
        if not self._environment_ready:
            self._strategy.setup_environment()
            rank_zero_only.rank = self._strategy.global_rank  # type: ignore[attr-defined]
            if self._preemption is not None:  # in every rank: each process gets its own signals
                self._preemption.install(global_rank=self._strategy.global_rank)
            self._environment_ready = True

    # ------------------------------------------------------------------------------ set-up
    def setup(
        self, module: nn.Module, *optimizers: Optimizer, scheduler: Any = None, move_to_device: bool = True,
        _reapply_compile: bool = True,
    ) -> Any:
        """Set up a model and its optimizers; returns ``(model, *optimizers)`` (plus ``scheduler`` if given).

        Example:
            >>> fabric = Fabric(accelerator="cpu")
            >>> model = torch.nn.Linear(3, 1)
            >>> model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        """
        validation.check_module(module, "setup")
        validation.check_optimizers(optimizers, "setup")
        validation.check_launched(self._plan, self._launched, "setup")
        self._setup_environment()
        fabric_module, fabric_optimizers = setup_module_and_optimizers(
            self._strategy, module, optimizers, move_to_device=move_to_device
        )
        self._models_setup += 1
        self._optimizers_setup += len(fabric_optimizers)
        result: tuple[Any, ...] = (fabric_module, *fabric_optimizers, *(() if scheduler is None else (scheduler,)))
        return result[0] if len(result) == 1 else result

    def setup_module(self, module: nn.Module, move_to_device: bool = True, _reapply_compile: bool = True) -> FabricModule:
        """Set up a model alone (for inference, or strategies that need the model before the optimizer)."""
        validation.check_module(module, "setup_module")
        return self.setup(module, move_to_device=move_to_device)

    def setup_optimizers(self, *optimizers: Optimizer) -> FabricOptimizer | tuple[FabricOptimizer, ...]:
        """Set up optimizers created after :meth:`setup_module`."""
        validation.check_optimizers(optimizers, "setup_optimizers", required=True)
        wrapped = [wrap_optimizer(self._strategy.setup_optimizer(o), self._strategy) for o in optimizers]
        self._optimizers_setup += len(wrapped)
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def setup_dataloaders(
        self, *dataloaders: DataLoader, use_distributed_sampler: bool = True, move_to_device: bool = True,
        even_batches: bool = True,
    ) -> Any:
        """Wrap dataloaders so that batches arrive on the device and, with several processes, each rank gets its part.

        Args:
            use_distributed_sampler: give each rank its share (a DistributedSampler keeping shuffle, seed and
                drop_last; a custom sampler is wrapped). ``False`` leaves the sampler alone.
            move_to_device: move every batch to ``fabric.device``.
            even_batches: pad so that every rank gets the same number of batches (required for training with
                DDP). ``False`` splits without repeats, so evaluation metrics summed with ``all_reduce`` count
                each sample exactly once; ranks may then get one batch fewer.
        """
        validation.check_dataloaders(dataloaders)
        validation.check_launched(self._plan, self._launched, "setup_dataloaders")
        self._setup_environment()
        wrapped = [
            setup_dataloader(self._strategy, d, use_distributed_sampler=use_distributed_sampler,
                             move_to_device=move_to_device, even_batches=even_batches)
            for d in dataloaders
        ]
        return wrapped[0] if len(wrapped) == 1 else wrapped

    # ------------------------------------------------------------------------------ training
    def backward(self, tensor: torch.Tensor, *args: Any, model: FabricModule | None = None, **kwargs: Any) -> None:
        """Use instead of ``loss.backward()``: applies loss scaling and strategy hooks."""
        if not self._models_setup:
            raise validation.backward_before_setup_error()
        if self._plain_backward:
            tensor.backward(*args, **kwargs)
            return
        if not self._optimizers_setup and self._precision.scales_loss():
            raise validation.scaled_loss_without_optimizer_error(self._plan.precision)
        module = model._forward_module if isinstance(model, FabricModule) else model
        self._strategy.backward(tensor, module, *args, **kwargs)

    def clip_gradients(
        self, module: nn.Module | FabricModule, optimizer: Optimizer | FabricOptimizer, clip_val: float | int | None = None,
        max_norm: float | int | None = None, norm_type: float | int = 2.0, error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """Clip gradients by value (``clip_val``) or by total norm (``max_norm``, returns the norm before clipping).

        Gradients are unscaled first when a GradScaler is active.
        """
        validation.check_clip_arguments(clip_val, max_norm)
        if clip_val is not None:
            self._strategy.clip_gradients_value(unwrap(module), unwrap(optimizer), clip_val=clip_val)
            return None
        return self._strategy.clip_gradients_norm(
            unwrap(module), unwrap(optimizer), max_norm=max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def autocast(self) -> ContextManager[Any]:
        """The precision's forward context, for code that runs outside the set-up model's forward."""
        return self._precision.forward_context()

    def to_device(self, obj: Any) -> Any:
        """Move a module, a tensor or a collection of tensors to this process's device."""
        if isinstance(obj, nn.Module):
            return self._strategy.module_to_device(obj)
        return move_data_to_device(obj, self.device)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` only on local rank 0 (once per machine)."""
        if self.local_rank == 0:
            print(*args, **kwargs)

    # ------------------------------------------------------------------------------ collectives
    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this point."""
        self._strategy.barrier(name=name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send ``obj`` (a tensor or any picklable object) from rank ``src`` to every rank."""
        return self._strategy.broadcast(obj, src=src)

    def all_gather(
        self, data: Any, group: Any | None = None, sync_grads: bool = False, *, same_shape: bool = False,
        stacked: bool = False,
    ) -> Any:
        """Gather tensors (or numbers, or collections of them) from every rank.

        As in Lightning, each result has shape ``(world_size, *shape)``, and at world size 1 no dimension is
        added: the tensor comes back as it is (on ``fabric.device``; a Python number becomes a 0-dim tensor).
        ``stacked=True`` always adds the leading world-size dimension, also in one process (``(1, *shape)``),
        for code that should not branch on the process count. Collections are gathered element by element.

        Every rank first learns the others' shapes, dtypes and device types (one small extra collective), so
        uneven first dimensions are concatenated (no leading dimension then, with or without ``stacked``) and a
        dtype or device mismatch raises on every rank. ``same_shape=True`` skips that exchange when you know
        every rank passes the same shape, dtype and device type (then a mismatch is undefined behaviour, as with
        raw ``torch.distributed.all_gather``). Without ``sync_grads=True`` the result carries no gradient.

        Example:
            >>> fabric = Fabric(accelerator="cpu")
            >>> fabric.all_gather(torch.tensor([1.0, 2.0])).shape, fabric.all_gather(2.5)
            (torch.Size([2]), tensor(2.5000))
            >>> fabric.all_gather({"x": torch.tensor([1.0, 2.0])}, stacked=True)["x"].shape
            torch.Size([1, 2])
        """
        return gather_collection(
            self._strategy, data, device=self.device, group=group, sync_grads=sync_grads, same_shape=same_shape,
            stacked=stacked,
        )

    def all_reduce(self, data: Any, group: Any | None = None, reduce_op: str | Any = "mean") -> Any:
        """Reduce tensors (or numbers, or collections) across ranks with ``sum``, ``mean``, ``max`` or ``min``."""
        validate_reduce_op(reduce_op)
        return reduce_collection(self._strategy, data, device=self.device, group=group, reduce_op=reduce_op)

    def should_stop(self) -> bool:
        """Whether any rank received a preemption signal (``Fabric(plugins=[Preemption()])``); the same answer on every rank.

        Call it once per step; on ``True`` save and leave the loop. One ``all_reduce(MAX)`` of a one-element
        tensor (none in one process); always ``False`` without the plugin. Under SLURM, rank 0 requeues the
        job when it exits (see ``fabric_lite.plugins.Preemption``).

        Example:
            >>> fabric = Fabric(accelerator="cpu")
            >>> fabric.should_stop()
            False
        """
        if self._preemption is None:
            return False
        return self._preemption.agree(any_rank(self._preemption.flag, self._strategy))

    def rank_zero_first(self, local: bool = False) -> ContextManager[None]:
        """Run the block on rank 0 (of the machine if ``local``) first, then on the others, e.g. to download data once."""
        return rank_zero_first(self.local_rank if local else self.global_rank, self.barrier)

    def no_backward_sync(self, module: FabricModule, enabled: bool = True) -> ContextManager[Any]:
        """Skip gradient synchronisation inside the block (gradient accumulation); a no-op in one process."""
        validation.check_set_up_module(module, "no_backward_sync")
        if not enabled:
            return contextlib.nullcontext()
        return self._strategy.no_backward_sync(module._forward_module, enabled)

    # ------------------------------------------------------------------------------ creation
    def init_module(self, empty_init: bool | None = None) -> ContextManager[Any]:
        """Create modules directly on the device and in the precision's dtype.

        With ``empty_init=True`` parameter initialisation is skipped (use when loading weights next).
        """
        self._setup_environment()
        return self._strategy.module_init_context(empty_init=empty_init)

    def init_tensor(self) -> ContextManager[Any]:
        """Create tensors directly on the device and in the precision's dtype."""
        return self._strategy.tensor_init_context()

    def sharded_model(self) -> ContextManager[Any]:
        """Deprecated spelling of :meth:`init_module`."""
        rank_zero_warn("fabric.sharded_model() is deprecated: use fabric.init_module().", DeprecationWarning)
        return self.init_module()

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path, state: dict[str, Any], filter: dict[str, Callable[[str, Any], bool]] | None = None) -> None:
        """Save modules, optimizers, stateful objects and plain values in ``state`` to ``path``, atomically.

        ``filter`` maps a state key to ``fn(name, value) -> bool`` selecting entries of that object's state dict.
        """
        validation.check_launched(self._plan, self._launched, "save")
        orchestrate.save(self._strategy, path, state, filter)

    def load(
        self, path: str | Path, state: dict[str, Any] | None = None, strict: bool = True, *, weights_only: bool = True
    ) -> dict[str, Any]:
        """Restore ``state`` in place from ``path`` and return what the checkpoint held beyond it.

        With ``state=None`` the whole checkpoint is returned. ``weights_only=False`` allows arbitrary
        pickles: use it only for files you trust.
        """
        validation.check_launched(self._plan, self._launched, "load")
        return orchestrate.load(self._strategy, path, state, strict=strict, weights_only=weights_only)

    def load_raw(self, path: str | Path, obj: nn.Module | Optimizer, strict: bool = True, *, weights_only: bool = True) -> None:
        """Load a bare state dict (as written by ``torch.save(model.state_dict())``) into a module or optimizer."""
        orchestrate.load_raw(self._strategy, path, obj, strict=strict, weights_only=weights_only)

    # ------------------------------------------------------------------------------ seeding
    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool | None = None, verbose: bool = True) -> int:
        """Seed Python, NumPy and torch; ``workers=True`` also seeds dataloader workers distinctly."""
        return seed_processes(seed, workers=bool(workers), verbose=verbose)

    def __repr__(self) -> str:
        return f"Fabric(strategy={self._strategy!r}, world_size={self.world_size})"
