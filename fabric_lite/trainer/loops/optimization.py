"""Optimisation: automatic steps (accumulation, zero_grad / backward / clipping / step hooks in Lightning's order),
schedulers, and the optimizer that ``self.optimizers()`` hands to manual optimisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.loops.hooks import call_hook, call_module, call_step
from fabric_lite.trainer.optimizers import loss_of
from fabric_lite.utilities.rank_zero import rank_zero_warn
from fabric_lite.wrappers import unwrap

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


def automatic_step(trainer: Trainer, batch: Any, batch_idx: int, is_last: bool) -> Any:
    """One training batch: its step and backward, and the optimizer step at an accumulation boundary."""
    state = trainer.state
    model, fabric_model = state.lightning_module, state.model
    optimizer = state.optimizers[0] if state.optimizers else None
    accumulate = trainer.accumulate_grad_batches
    boundary = (batch_idx + 1) % accumulate == 0 or is_last
    with trainer.fabric.no_backward_sync(fabric_model, enabled=not boundary and trainer.world_size > 1):
        outputs = call_step(trainer, "training_step", batch, batch_idx)
        loss = loss_of(outputs)
        if loss is None or optimizer is None:
            return outputs
        if batch_idx % accumulate == 0 or state.needs_zero_grad:
            call_hook(trainer, "on_before_zero_grad", optimizer)
            model.optimizer_zero_grad(state.current_epoch, batch_idx, optimizer)
            state.needs_zero_grad = False
        scaled = loss / accumulate if accumulate > 1 else loss
        call_hook(trainer, "on_before_backward", scaled)
        model.backward(scaled)
        call_hook(trainer, "on_after_backward")
    if boundary:
        if trainer.fabric.strategy.precision.scales_loss():
            # As in Lightning, hooks see unscaled gradients under a GradScaler: clipping at an infinite norm
            # unscales them (once per step; the real clipping after the hook does not unscale again).
            trainer.fabric.clip_gradients(fabric_model, optimizer, max_norm=float("inf"), error_if_nonfinite=False)
        call_hook(trainer, "on_before_optimizer_step", optimizer)
        call_module(trainer, "configure_gradient_clipping", optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        model.optimizer_step(state.current_epoch, batch_idx, optimizer)
        after_optimizer_step(trainer)
        state.needs_zero_grad = True
    return outputs


def after_optimizer_step(trainer: Trainer) -> None:
    """Count the step and run the step-interval schedulers (manual optimisation's ``opt.step()`` calls this too)."""
    trainer.state.global_step += 1
    update_schedulers(trainer, "step", plateau=True)


def update_schedulers(trainer: Trainer, interval: str, *, plateau: bool) -> None:
    """Step the schedulers of ``interval`` whose frequency is due (ReduceLROnPlateau with its monitored metric)."""
    state = trainer.state
    for config in state.lr_scheduler_configs:
        if config.interval != interval or (config.reduce_on_plateau and not plateau):
            continue
        if interval == "epoch" and not plateau and config.reduce_on_plateau:
            continue
        if interval == "epoch" and plateau and not config.reduce_on_plateau:
            continue
        counter = state.global_step if interval == "step" else state.current_epoch + 1
        if counter % config.frequency != 0:
            continue
        if config.reduce_on_plateau:
            value = state.callback_metrics.get(config.monitor or "")
            if value is None:
                if config.strict:
                    raise ConfigurationError(
                        f"The ReduceLROnPlateau scheduler monitors {config.monitor!r}, which no self.log call recorded "
                        f"(recorded: {', '.join(sorted(state.callback_metrics)) or 'nothing'}). Fix: log it, or set "
                        f"'monitor' in the lr_scheduler config to one of those."
                    )
                rank_zero_warn(f"ReduceLROnPlateau: {config.monitor!r} was not logged; the scheduler did not step.")
                continue
            config.scheduler.step(float(value))
        else:
            config.scheduler.step()


class ManualOptimizer:
    """What ``self.optimizers()`` returns under manual optimisation: the set-up optimizer, with ``step`` running the hooks.

    ``step`` calls ``on_before_optimizer_step`` (callbacks, then module), steps through Fabric and counts one
    ``global_step``, as Lightning does; every other attribute is the optimizer's own.
    """

    def __init__(self, optimizer: Any, trainer: Trainer) -> None:
        self.__dict__["_optimizer"] = optimizer
        self.__dict__["_trainer"] = trainer

    @property
    def optimizer(self) -> Optimizer:
        return unwrap(self._optimizer)

    def step(self, closure: Any = None) -> Any:
        trainer = self._trainer
        call_hook(trainer, "on_before_optimizer_step", self._optimizer)
        output = self._optimizer.step(closure) if closure is not None else self._optimizer.step()
        after_optimizer_step(trainer)
        return output

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_optimizer"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._optimizer, name, value)


def inner_optimizer(optimizer: Any) -> Any:
    """The Fabric-set-up optimizer behind a :class:`ManualOptimizer` (any other optimizer as it is)."""
    return optimizer._optimizer if isinstance(optimizer, ManualOptimizer) else optimizer
