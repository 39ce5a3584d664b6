"""The Strategy interface every strategy inherits from, with the single-process behaviour as default.

A strategy owns device placement, module/optimizer wrapping, backward and step (through its
precision plugin), collectives and checkpoint I/O. Fabric only calls these methods and never
branches on a concrete strategy type.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.accelerators import Accelerator
from fabric_lite.checkpoint.io import atomic_save, load_checkpoint_file
from fabric_lite.checkpoint.state import restore_state, to_saveable
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.environments.local import LocalEnvironment
from fabric_lite.errors import ConfigurationError
from fabric_lite.precision.base import Precision
from fabric_lite.utilities.init import EmptyInit

REDUCE_OPS = ("sum", "mean", "max", "min")


class Arguments(Mapping[str, Any]):
    """The keyword arguments a strategy was constructed with, as given (frozen, picklable).

    The plan reads it to know what the user chose (a timeout, devices, an environment) and what it may fill in.

    Example:
        >>> from fabric_lite.strategies.single_device import SingleDeviceStrategy
        >>> dict(SingleDeviceStrategy(device="cpu").arguments)
        {'device': 'cpu'}
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_items", dict(items or {}))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Arguments are frozen")

    def __getstate__(self) -> dict[str, Any]:
        return self._items

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_items", dict(state))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Arguments({self._items!r})"


def _given_arguments(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
    """What the caller passed to ``cls(...)``, by parameter name (a ``**kwargs`` parameter flattened)."""
    signature = inspect.signature(cls.__init__)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:  # __init__ raises the same error, with its own wording
        return Arguments()
    items: dict[str, Any] = {}
    for position, (name, value) in enumerate(bound.arguments.items()):
        if position == 0:
            continue  # self
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            items.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:  # forwarded to a base class: named by its order
            items.update(zip(getattr(cls, "positional_arguments", ()), value))
        else:
            items[name] = value
    return Arguments(items)


#: The device arguments of the strategies without a process group (XLA, XLA-SPMD), in Lightning's positional order.
DEVICE_ARGUMENTS = ("accelerator", "parallel_devices", "cluster_environment", "precision")


def device_arguments(owner: type, names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``args`` named in the order ``names`` plus ``kwargs`` (only those names): the shared device arguments that a
    strategy takes with ``*args, **devices`` instead of re-declaring them. Misuse raises Python's usual TypeError."""
    if len(args) > len(names):
        raise TypeError(f"{owner.__name__}() takes at most {len(names)} positional arguments ({len(args)} given)")
    named = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"{owner.__name__}() got an unexpected keyword argument {key!r}")
        if key in named:
            raise TypeError(f"{owner.__name__}() got multiple values for argument {key!r}")
        named[key] = value
    return named


class Strategy:
    """Base strategy: one process, one device; collectives are identities with world-size shapes.

    ``strategy.arguments`` records the keywords it was constructed with: the plan fills in only the others.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Strategy:
        self = super().__new__(cls)
        self.arguments = _given_arguments(cls, args, kwargs)
        return self

    name: str = ""
    #: True where a forward pass is itself a collective (parameters gathered from every rank, as in FSDP):
    #: every rank must then run the same number of batches, evaluation included (no uneven splits).
    collective_forward: bool = False
    #: True where a step inside ``no_backward_sync`` runs no collective at all (DDP's no_sync), so one rank can
    #: fail a step (e.g. out of memory) without leaving the others waiting in it. The tuner asks this.
    local_steps_under_no_sync: bool = False

    def __init__(
        self,
        *,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        cluster_environment: ClusterEnvironment | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.precision = precision if precision is not None else Precision()
        self.cluster_environment = cluster_environment if cluster_environment is not None else LocalEnvironment()

    # ----------------------------------------------------------------- identity
    @property
    def root_device(self) -> torch.device:
        raise NotImplementedError

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any] | None:
        """Arguments for a DistributedSampler, or None when data needs no splitting across processes."""
        return None

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        """Prepare the process (device, process group). Called once by ``Fabric.launch``."""
        if self.accelerator is not None:
            self.accelerator.setup_device(self.root_device)

    def module_to_device(self, module: nn.Module) -> nn.Module:
        return module.to(self.root_device)

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Wrap ``module`` for this strategy (DDP, FSDP, ...); the identity here."""
        return module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        return self.setup_module(module), [self.setup_optimizer(o) for o in optimizers]

    def process_dataloader(self, dataloader: Any) -> Any:
        return dataloader

    def module_init_context(self, empty_init: bool | None = None) -> ContextManager[Any]:
        """Where and in which dtype ``Fabric.init_module`` builds modules."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.tensor_init_context())
        stack.enter_context(EmptyInit(enabled=bool(empty_init)))
        stack.enter_context(self.precision.module_init_context())
        return stack

    def tensor_init_context(self) -> ContextManager[Any]:
        stack = contextlib.ExitStack()
        if self.root_device.type != "cpu":
            stack.enter_context(self.root_device)
        stack.enter_context(self.precision.tensor_init_context())
        return stack

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> ContextManager[Any]:
        """Skip gradient synchronisation inside the block (nothing to skip in one process)."""
        return contextlib.nullcontext()

    # --------------------------------------------------------- training steps
    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        self.precision.backward(tensor, module, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        return self.precision.optimizer_step(optimizer, **kwargs)

    # The per-step hot path asks these once, at setup: when both answer True, Fabric calls
    # tensor.backward() and optimizer.step() directly instead of through two layers of delegation
    # (each layer costs about a microsecond per step, which shows on launch-bound models).
    def plain_backward(self) -> bool:
        return type(self).backward is Strategy.backward and self.precision.plain_backward()

    def plain_optimizer_step(self) -> bool:
        return type(self).optimizer_step is Strategy.optimizer_step and self.precision.plain_step()

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        self.precision.unscale_gradients(optimizer)
        parameters = _optimizer_parameters(optimizer)
        # With a GradScaler, inf/nan gradients are expected now and then: the scaler skips that step.
        if getattr(self.precision, "scaler", None) is not None:
            error_if_nonfinite = False
        return torch.nn.utils.clip_grad_norm_(
            parameters, max_norm=max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def clip_gradients_value(self, module: nn.Module, optimizer: Optimizer, clip_val: float) -> None:
        self.precision.unscale_gradients(optimizer)
        torch.nn.utils.clip_grad_value_(_optimizer_parameters(optimizer), clip_value=clip_val)

    # -------------------------------------------------------------- collectives
    def barrier(self, name: str | None = None) -> None:
        pass

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather(
        self, tensor: torch.Tensor, group: Any | None = None, sync_grads: bool = False, *, same_shape: bool = False
    ) -> torch.Tensor:
        """Stack every rank's tensor along a new first dimension of size world_size (1 here).

        Strategies always stack (uneven first dimensions concatenate); ``Fabric.all_gather`` removes the
        dimension again at world size 1 unless asked for ``stacked=True``, as Lightning documents.
        """
        gathered = tensor.unsqueeze(0)
        return gathered if sync_grads else gathered.detach()

    def all_reduce(self, tensor: torch.Tensor, group: Any | None = None, reduce_op: str | Any = "mean") -> torch.Tensor:
        return tensor

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    # ------------------------------------------------------------- checkpoints
    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        return module.state_dict()

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def save_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Write ``state`` to ``path`` atomically from global rank 0."""
        if self.is_global_zero:
            atomic_save(to_saveable(state, self, filter=filter), path)

    def load_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any] | nn.Module | Optimizer | None = None,
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        checkpoint = load_checkpoint_file(path, weights_only=weights_only, map_location="cpu")
        return restore_state(checkpoint, state, self, strict=strict, source=str(path))

    def teardown(self) -> None:
        self.precision.teardown()
        if self.accelerator is not None:
            self.accelerator.teardown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.root_device}, precision={self.precision.name!r})"


def _optimizer_parameters(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def validate_reduce_op(reduce_op: Any) -> None:
    """Refuse an unknown reduction with the valid choices."""
    if isinstance(reduce_op, str) and reduce_op.lower() not in REDUCE_OPS:
        raise ConfigurationError(
            f"all_reduce(reduce_op={reduce_op!r}) is not a known reduction. Choose one of: {', '.join(REDUCE_OPS)} "
            f"(or a torch.distributed.ReduceOp)."
        )
