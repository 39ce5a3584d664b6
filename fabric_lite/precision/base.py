"""The Precision interface: the default behaviour is full fp32 with nothing to cast or scale."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.utilities.apply_func import apply_to_collection


class Precision:
    """Full precision (``"32-true"``) and the base of every other precision plugin.

    Example:
        >>> p = Precision()
        >>> p.name, p.is_identity
        ('32-true', True)
    """

    name: str = "32-true"
    #: True when forward needs no context and no casting: wrappers then skip this plugin entirely.
    is_identity: bool = True
    #: True when floating-point inputs are cast before forward (the true-dtype precisions).
    casts_input: bool = False

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def forward_context(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def module_init_context(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def tensor_init_context(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def convert_input(self, data: Any) -> Any:
        return data

    def convert_output(self, data: Any) -> Any:
        return data

    def pre_backward(self, tensor: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        return tensor

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        tensor.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        return optimizer.step(**kwargs)

    def scales_loss(self) -> bool:
        """Whether ``backward`` multiplies the loss (a GradScaler), so gradients must be unscaled before use."""
        return False

    def plain_backward(self) -> bool:
        """Whether backward is just ``tensor.backward()`` (lets the hot path skip this plugin)."""
        return True

    def plain_step(self) -> bool:
        """Whether an optimizer step is just ``optimizer.step()`` (lets the hot path skip this plugin)."""
        return True

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Bring gradients to their true scale before they are read (clipping); no-op without a scaler."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def teardown(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def cast_floating(data: Any, dtype: torch.dtype) -> Any:
    """Cast every floating-point tensor in a collection to ``dtype`` (integers and bools are kept)."""

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if torch.is_floating_point(tensor) else tensor

    return apply_to_collection(data, torch.Tensor, cast)
