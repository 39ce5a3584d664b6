"""Automatic mixed precision (``16-mixed``, ``bf16-mixed``) through ``torch.autocast`` and ``torch.amp.GradScaler``."""

from __future__ import annotations

from typing import Any, ContextManager

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.errors import ConfigurationError
from fabric_lite.precision.base import Precision, cast_floating

_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class MixedPrecision(Precision):
    """Weights stay fp32; forward runs under ``torch.autocast``; fp16 losses are scaled by a GradScaler.

    Args:
        precision: ``"16-mixed"`` or ``"bf16-mixed"``.
        device: the device type autocast runs on (``"cuda"``, ``"cpu"``, ...).
        scaler: a ``torch.amp.GradScaler`` to use with ``16-mixed``; one is created when omitted.
            ``bf16-mixed`` needs none and refuses one.

    Example:
        >>> p = MixedPrecision("bf16-mixed", "cpu")
        >>> with p.forward_context():
        ...     y = torch.nn.Linear(2, 2)(torch.ones(1, 2))
        >>> y.dtype
        torch.bfloat16
    """

    is_identity = False

    def __init__(self, precision: str, device: str, scaler: torch.amp.GradScaler | None = None) -> None:
        if precision not in _DTYPES:
            raise ConfigurationError(
                f"MixedPrecision(precision={precision!r}) is not a known mixed precision. "
                f"Choose one of: {', '.join(_DTYPES)}."
            )
        if precision == "bf16-mixed" and scaler is not None:
            raise ConfigurationError(
                "MixedPrecision('bf16-mixed', scaler=...) was given a GradScaler, but bf16 has the range of fp32 and "
                "must not be loss-scaled. Fix: drop the scaler, or use precision='16-mixed'."
            )
        self.name = precision
        self.device = device
        self.dtype = _DTYPES[precision]
        if precision == "16-mixed" and scaler is None:
            scaler = torch.amp.GradScaler(device)
        self.scaler = scaler
        self._unscaled: set[int] = set()

    def forward_context(self) -> ContextManager[Any]:
        return torch.autocast(self.device, dtype=self.dtype)

    def convert_output(self, data: Any) -> Any:
        # Outputs leave the autocast region in the default dtype so that losses and metrics computed
        # by the user outside the model are not silently reduced in half precision.
        default = torch.get_default_dtype()
        if type(data) is torch.Tensor:
            return data.to(default) if data.is_floating_point() and data.dtype != default else data
        return cast_floating(data, default)

    def scales_loss(self) -> bool:
        return self.scaler is not None

    def plain_backward(self) -> bool:
        return self.scaler is None

    def plain_step(self) -> bool:
        return self.scaler is None

    def pre_backward(self, tensor: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        if self.scaler is not None:
            return self.scaler.scale(tensor)
        return tensor

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        self.pre_backward(tensor, module).backward(*args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if self.scaler is None:
            return optimizer.step(**kwargs)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ConfigurationError(
                "precision='16-mixed' cannot step torch.optim.LBFGS: a GradScaler cannot re-evaluate a closure. "
                "Fix: use precision='bf16-mixed' or '32-true' with LBFGS."
            )
        # GradScaler.step skips the update when it found inf/nan gradients; update() adapts the scale.
        output = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        return output

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        # unscale_ may run only once per optimizer between two steps; clipping twice must not fail.
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and state_dict:
            self.scaler.load_state_dict(state_dict)
