"""GradNormMonitor: log the p-norm of every parameter's gradient and of all together, before each optimizer step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


def grad_norm(module: torch.nn.Module, norm_type: float | str, group_separator: str = "/") -> dict[str, float]:
    """``{"grad_<p>_norm/<name>": ..., "grad_<p>_norm_total": ...}`` over the parameters that have a gradient.

    Example:
        >>> layer = torch.nn.Linear(2, 1, bias=False)
        >>> layer.weight.grad = torch.tensor([[3.0, 4.0]])
        >>> grad_norm(layer, 2)
        {'grad_2.0_norm/weight': 5.0, 'grad_2.0_norm_total': 5.0}
    """
    p = float(norm_type)
    norms = {
        f"grad_{p}_norm{group_separator}{name}": torch.linalg.vector_norm(param.grad.detach().float(), ord=p)
        for name, param in module.named_parameters()
        if param.grad is not None
    }
    if not norms:
        return {}
    total = torch.linalg.vector_norm(torch.stack(list(norms.values())), ord=p)
    result = {key: float(value) for key, value in norms.items()}
    result[f"grad_{p}_norm_total"] = float(total)
    return result


class GradNormMonitor(Callback):
    """Log gradient norms at ``on_before_optimizer_step`` (after accumulation, before clipping), every step.

    ``Trainer(track_grad_norm=2)`` (the older spelling) adds this callback.

    Example:
        >>> GradNormMonitor(norm_type=2).norm_type
        2.0
    """

    def __init__(self, norm_type: float | str = 2.0, group_separator: str = "/", legacy_names: bool = False) -> None:
        try:
            value = float(norm_type)
        except (TypeError, ValueError):
            value = -1.0
        if not value > 0:
            raise ConfigurationError(
                f"GradNormMonitor(norm_type={norm_type!r}) is not a p-norm order. Fix: a number > 0 such as 2, or 'inf'."
            )
        self.norm_type = value
        self.group_separator = group_separator
        self.legacy_names = legacy_names
        self.history: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        norms = grad_norm(pl_module, self.norm_type, self.group_separator)
        if not norms:
            return
        self.history.append(norms)
        for name, value in norms.items():
            pl_module.log(name, value, on_step=True, on_epoch=False)
