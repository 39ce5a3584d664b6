"""Thin wrappers returned by ``Fabric.setup*`` (module, optimizer, dataloader) and the set-up steps that make them.

The module runs its forward under the precision plugin, the optimizer steps through the strategy, the
dataloader moves batches to the device and records its position for an exact resume.

They cost as little as possible on the hot path: a full-precision forward is one extra Python
call, and batches already on a CPU target are not walked at all.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, DistributedSampler

from fabric_lite.errors import ConfigurationError
from fabric_lite.utilities.apply_func import move_data_to_device
from fabric_lite.utilities.data import optimizer_state_to, prepare_dataloader
from fabric_lite.utilities.resume import LoaderProgress

if TYPE_CHECKING:
    from fabric_lite.precision.base import Precision
    from fabric_lite.strategies.base import Strategy


class FabricModule(nn.Module):
    """Wraps the (possibly strategy-wrapped) module; forward runs under the precision plugin.

    ``state_dict`` / ``load_state_dict`` pass through to the user's original module, so
    checkpoints carry the user's own keys, and unknown attributes are read from it too.
    """

    def __init__(self, forward_module: nn.Module, precision: Precision, original_module: nn.Module | None = None) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._original_module = original_module if original_module is not None else forward_module
        object.__setattr__(self, "_fm", forward_module)  # plain attribute: skips nn.Module.__getattr__ per call
        object.__setattr__(self, "_precision", precision)
        object.__setattr__(self, "_forward_methods", set())
        object.__setattr__(self, "_fabric_module_ready", True)

    @property
    def module(self) -> nn.Module:
        """The user's original module."""
        return self._original_module

    @property
    def device(self) -> torch.device:
        for tensor in self._original_module.parameters():
            return tensor.device
        for tensor in self._original_module.buffers():
            return tensor.device
        return torch.device("cpu")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        precision = self._precision
        if precision.is_identity:
            return self._fm(*args, **kwargs)
        if precision.casts_input:
            args, kwargs = precision.convert_input((args, kwargs))
        with precision.forward_context():
            output = self._fm(*args, **kwargs)
        return precision.convert_output(output)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # nn.Module.__call__ only adds hook handling; skip it unless someone hooked the wrapper itself.
        if self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks:
            return super().__call__(*args, **kwargs)
        if self._precision.is_identity:
            return self._fm(*args, **kwargs)
        return self.forward(*args, **kwargs)

    def mark_forward_method(self, method: str | Callable[..., Any]) -> None:
        """Let ``model.<method>(...)`` run like ``forward`` (precision context, strategy hooks).

        Example:
            >>> fabric_model.mark_forward_method("generate")  # doctest: +SKIP
        """
        name = method if isinstance(method, str) else getattr(method, "__name__", None)
        if not isinstance(name, str):
            raise ConfigurationError(
                f"mark_forward_method({method!r}) needs a method name or a bound method of the module. "
                f"Fix: pass a string, e.g. model.mark_forward_method('generate')."
            )
        if name == "forward":
            raise ConfigurationError(
                "mark_forward_method('forward') is not needed: forward already runs through the wrapper. "
                "Fix: mark only other methods, e.g. 'generate'."
            )
        target = getattr(self._original_module, name, None)
        if not inspect.ismethod(target):
            raise ConfigurationError(
                f"mark_forward_method({name!r}): {type(self._original_module).__name__} has no method named {name!r}. "
                f"Fix: pass the name of a method defined on your module."
            )
        self._forward_methods.add(name)

    def _redirect_forward(self, name: str) -> Callable[..., Any]:
        original = self._original_module
        method = getattr(original, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            had_instance_forward = "forward" in original.__dict__
            saved = original.__dict__.get("forward")

            def one_shot(*a: Any, **k: Any) -> Any:
                # Restore forward first so that the method may call self.forward / self(...) itself.
                if had_instance_forward:
                    original.forward = saved
                else:
                    del original.forward
                return method(*a, **k)

            original.forward = one_shot
            try:
                return self.forward(*args, **kwargs)
            finally:
                if original.__dict__.get("forward") is one_shot:
                    if had_instance_forward:
                        original.forward = saved
                    else:
                        del original.forward

        return call

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, **kwargs: Any) -> Any:
        return self._original_module.load_state_dict(state_dict, strict=strict, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("_forward_methods", ()):
            return self._redirect_forward(name)
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = super().__getattr__("_original_module")
            return getattr(original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_fabric_module_ready", False):
            original = self._original_module
            if not hasattr(type(self), name) and name not in self.__dict__ and hasattr(original, name):
                setattr(original, name, value)
                return
        super().__setattr__(name, value)


class FabricOptimizer:
    """Wraps an optimizer so that ``step`` goes through the strategy (and its precision plugin).

    The wrapper is an instance of the user's optimizer class too (``isinstance(opt, torch.optim.AdamW)``
    holds), so LR schedulers accept it. Its attribute dictionary is a shallow copy of the
    original's: ``param_groups`` and ``state`` are the same objects.
    """

    _optimizer: Optimizer
    _strategy: Strategy
    _plain_step: bool

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if self._plain_step:
            return self._optimizer.step() if closure is None else self._optimizer.step(closure)
        kwargs = {} if closure is None else {"closure": closure}
        return self._strategy.optimizer_step(self._optimizer, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The wrapped optimizer's own: a strategy may hand out an optimizer (DeepSpeed's ZeRO) that keeps
        # gradients of its own, which the base class's loop over param_groups would miss.
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._strategy.get_optimizer_state(self._optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)
        # torch replaces these containers on load; share the new ones.
        self.__dict__["state"] = self._optimizer.state
        self.__dict__["param_groups"] = self._optimizer.param_groups


@functools.lru_cache(maxsize=None)
def _optimizer_wrapper_class(optimizer_class: type) -> type:
    return type(f"Fabric{optimizer_class.__name__}", (FabricOptimizer, optimizer_class), {})


def wrap_optimizer(optimizer: Optimizer, strategy: Strategy) -> FabricOptimizer:
    """Make a FabricOptimizer for ``optimizer`` whose steps go through ``strategy``."""
    cls = _optimizer_wrapper_class(type(optimizer))
    wrapper = cls.__new__(cls)
    # "step" may be an instance attribute patched by an LR scheduler; the wrapper must keep its own.
    wrapper.__dict__.update({k: v for k, v in optimizer.__dict__.items() if k not in ("step", "__del__")})
    wrapper.__dict__["_optimizer"] = optimizer
    wrapper.__dict__["_strategy"] = strategy
    wrapper.__dict__["_plain_step"] = strategy.plain_optimizer_step()
    return wrapper


class FabricDataLoader:
    """Iterates the user's dataloader and moves each batch to the device; other attributes pass through.

    It is stateful: ``state_dict()`` records the epoch, the batches handed out and the random state, and
    after ``load_state_dict`` the next ``iter(loader)`` continues that epoch exactly, also when the loop had
    been left with ``break`` or ``return`` before the save (see ``fabric_lite.utilities.resume``). Put it in
    the state of ``fabric.save`` / ``fabric.load``.
    """

    def __init__(self, dataloader: DataLoader, device: torch.device | None = None, *, rank: int = 0, world_size: int = 1) -> None:
        self._dataloader = dataloader
        # Batches from a CPU dataloader already live on a CPU target: no per-batch walk needed.
        self._device = None if device is None or device.type == "cpu" else device
        self._target_device = device
        self._progress = LoaderProgress(rank=rank, world_size=world_size)

    @property
    def device(self) -> torch.device | None:
        return self._target_device

    @property
    def dataloader(self) -> DataLoader:
        return self._dataloader

    def __len__(self) -> int:
        return len(self._dataloader)

    def __iter__(self) -> Iterator[Any]:
        sampler = getattr(self._dataloader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            # A new epoch reshuffles differently, the same way on every rank.
            sampler.set_epoch(self._progress.next_epoch())
        iterator = self._progress.iterate(self._dataloader)  # counts batches; continues an epoch after load_state_dict
        if self._device is None:
            yield from iterator
            return
        device = self._device
        for batch in iterator:
            yield move_data_to_device(batch, device)

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (epoch, batches handed out) and random state; ``fabric.save`` gathers all ranks'."""
        return self._progress.state_dict(self._dataloader)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state (this rank's entry is picked from a gathered one); the next ``iter`` continues its epoch."""
        self._progress.load_state_dict(state_dict, self._dataloader)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_dataloader", "_progress"):
            raise AttributeError(name)
        return getattr(self._dataloader, name)


def is_wrapped(obj: object) -> bool:
    """Whether ``obj`` was returned by one of Fabric's ``setup*`` methods."""
    return isinstance(obj, (FabricModule, FabricOptimizer, FabricDataLoader))


def unwrap(obj: Any) -> Any:
    """The user's own object behind a wrapper (the object itself if it is not wrapped)."""
    if isinstance(obj, FabricModule):
        return obj._original_module
    if isinstance(obj, FabricOptimizer):
        return obj._optimizer
    if isinstance(obj, FabricDataLoader):
        return obj._dataloader
    return obj


def setup_module_and_optimizers(
    strategy: Strategy, module: nn.Module, optimizers: Sequence[Optimizer], *, move_to_device: bool
) -> tuple[FabricModule, list[FabricOptimizer]]:
    """What ``fabric.setup`` does: convert to the precision, move, let the strategy wrap, then wrap for the user."""
    precision = strategy.precision
    original = module
    module = precision.convert_module(module)
    if move_to_device:
        module = strategy.module_to_device(module)
        for optimizer in optimizers:  # state loaded before setup must follow the parameters
            optimizer_state_to(optimizer, strategy.root_device)
    if optimizers:
        module, wrapped = strategy.setup_module_and_optimizers(module, list(optimizers))
    else:
        module, wrapped = strategy.setup_module(module), []
    return FabricModule(module, precision, original_module=original), [wrap_optimizer(o, strategy) for o in wrapped]


def setup_dataloader(
    strategy: Strategy, dataloader: DataLoader, *, use_distributed_sampler: bool, move_to_device: bool, even_batches: bool
) -> FabricDataLoader:
    """What ``fabric.setup_dataloaders`` does for one loader: give each rank its share, then move batches."""
    sampler_kwargs = strategy.distributed_sampler_kwargs if use_distributed_sampler else None
    dataloader = prepare_dataloader(dataloader, sampler_kwargs, rank=strategy.global_rank, even_batches=even_batches)
    dataloader = strategy.process_dataloader(dataloader)
    device = strategy.root_device if move_to_device else None
    return FabricDataLoader(dataloader, device=device, rank=strategy.global_rank, world_size=strategy.world_size)
