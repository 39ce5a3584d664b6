"""The optimisation side of a LightningModule: its optimizers and schedulers, manual optimisation, clipping, step hooks.

Same names as Lightning's. Everything goes through the running Trainer and its Fabric (``self.trainer``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.loops import hooks as loop_hooks
from fabric_lite.trainer.loops.optimization import inner_optimizer, lightning_optimizers
from fabric_lite.wrappers import unwrap

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


class OptimizationMixin:
    """Optimizer methods and hooks of :class:`~fabric_lite.trainer.LightningModule` (which sets ``_toggled``)."""

    if TYPE_CHECKING:
        _toggled: dict[nn.Parameter, bool] | None

        @property
        def trainer(self) -> Trainer: ...

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The set-up optimizer(s): one object, or a list when there are several.

        Each is a ``torch.optim.Optimizer`` (``isinstance`` holds for its own class too) whose ``step(closure)``
        runs the closure, the ``on_before_optimizer_step`` hooks and the step through Fabric, and counts a
        ``global_step`` under manual optimisation. ``use_pl_optimizer=False``: the Fabric-set-up optimizers.
        """
        optimizers = lightning_optimizers(self.trainer) if use_pl_optimizer else list(self.trainer.optimizers)
        return optimizers[0] if len(optimizers) == 1 else optimizers

    def lr_schedulers(self) -> Any:
        """The scheduler(s) from ``configure_optimizers``: None, one, or a list."""
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Use instead of ``loss.backward()`` under manual optimisation (scaling, strategy hooks, backward hooks)."""
        trainer = self.trainer
        loop_hooks.call_hook(trainer, "on_before_backward", loss)
        trainer.fabric.backward(loss, *args, model=trainer.model, **kwargs)
        loop_hooks.call_hook(trainer, "on_after_backward")

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Called by the Trainer under automatic optimisation; override to customise."""
        self.trainer.fabric.backward(loss, *args, model=self.trainer.model, **kwargs)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze (``requires_grad=False``) every parameter that belongs only to the other optimizers."""
        own = {id(p) for group in unwrap(inner_optimizer(optimizer)).param_groups for p in group["params"]}
        if self._toggled is None:
            self._toggled = {}
        for other in self.trainer.optimizers:
            for group in unwrap(other).param_groups:
                for parameter in group["params"]:
                    if id(parameter) in own:
                        continue
                    self._toggled.setdefault(parameter, parameter.requires_grad)
                    parameter.requires_grad = False
        for group in unwrap(inner_optimizer(optimizer)).param_groups:
            for parameter in group["params"]:
                if parameter in self._toggled:
                    parameter.requires_grad = self._toggled.pop(parameter)

    def untoggle_optimizer(self, optimizer: Any = None) -> None:
        """Restore ``requires_grad`` of the parameters that :meth:`toggle_optimizer` froze."""
        for parameter, requires_grad in (self._toggled or {}).items():
            parameter.requires_grad = requires_grad
        self._toggled = None

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Generator[None, None, None]:
        """``toggle_optimizer`` for the block, ``untoggle_optimizer`` after it."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip the gradients of the module by norm (default) or by value, through ``fabric.clip_gradients``."""
        if not gradient_clip_val:
            return
        algorithm = gradient_clip_algorithm or "norm"
        fabric, model = self.trainer.fabric, self.trainer.model
        if getattr(fabric.strategy, "name", None) == "deepspeed" and algorithm == "norm":
            return  # the engine clips inside its step (the Trainer put gradient_clip_val into its config)
        if algorithm == "value":
            fabric.clip_gradients(model, inner_optimizer(optimizer), clip_val=gradient_clip_val)
        elif algorithm == "norm":
            fabric.clip_gradients(model, inner_optimizer(optimizer), max_norm=gradient_clip_val, error_if_nonfinite=False)
        else:
            raise ConfigurationError(
                f"clip_gradients(gradient_clip_algorithm={algorithm!r}) is not a known algorithm. Choose one of: norm, value."
            )

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Called before each optimizer step with the Trainer's clipping settings; override to customise."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Zero the gradients (at the first batch of each accumulation window); override to customise."""
        optimizer.zero_grad()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step ``optimizer`` with ``optimizer_closure`` (training_step, zero_grad, backward, pre-step hooks, clipping).

        Override it as Lightning's docs do, e.g. for a learning-rate warm-up::

            def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
                optimizer.step(closure=optimizer_closure)
                if self.trainer.global_step < 500:
                    for pg in optimizer.param_groups:
                        pg["lr"] = min(1.0, (self.trainer.global_step + 1) / 500) * self.hparams.lr

        The closure must run once (through ``optimizer.step(closure=...)`` or by calling it).
        """
        optimizer.step(closure=optimizer_closure)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step one scheduler of ``configure_optimizers`` when its interval is due; override for schedulers that are not
        torch's (e.g. ``scheduler.step(epoch=self.current_epoch)`` for timm's). ``metric`` is the monitored value of a
        ReduceLROnPlateau, else None."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)
