"""Optimisation: automatic steps (accumulation, zero_grad / backward / clipping / step hooks in Lightning's order),
schedulers, and the optimizer that ``self.optimizers()`` hands to manual optimisation."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.trainer.loops.hooks import call_hook, call_module, call_step
from fabric_lite.trainer.optimizers import loss_of
from fabric_lite.utilities.rank_zero import rank_zero_warn
from fabric_lite.wrappers import unwrap

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


def automatic_step(trainer: Trainer, batch: Any, batch_idx: int, is_last: bool) -> Any:
    """One training batch under automatic optimisation, with Lightning's closure semantics.

    Inside an accumulation window the closure (training_step, zero_grad on the window's first batch, backward of
    ``loss / accumulate_grad_batches``) runs directly, without gradient sync. At the window's end the module's
    ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)`` gets it, and ``optimizer.step(closure=...)``
    runs it before stepping; the closure also calls ``on_before_optimizer_step`` and gradient clipping after the
    backward, so an override that changes ``pg["lr"]`` and steps (the LR warm-up recipe) works as in Lightning.
    """
    state = trainer.state
    model, fabric_model = state.lightning_module, state.model
    optimizer = state.optimizers[0] if state.optimizers else None
    if optimizer is None:
        return call_step(trainer, "training_step", batch, batch_idx)
    boundary = ends_accumulation(trainer, batch_idx, is_last)
    engine = engine_accumulates(trainer)
    # Under DeepSpeed the engine accumulates (its gradient_accumulation_steps is the Trainer's accumulate_grad_batches):
    # every batch goes through optimizer_step, the engine divides the loss and updates on its boundary only (as Lightning).
    closure = TrainingClosure(trainer, batch, batch_idx, optimizer, boundary or engine)
    if not boundary and not engine:
        with trainer.fabric.no_backward_sync(fabric_model, enabled=trainer.world_size > 1):
            closure()
        return closure.outputs
    proxy = lightning_optimizers(trainer)[0]
    call_module(trainer, "optimizer_step", state.current_epoch, batch_idx, proxy, closure)
    if not closure.ran:
        raise UsageError(
            f"{type(model).__name__}.optimizer_step(...) returned without running the optimizer_closure, so training_step "
            f"and backward did not run for batch {batch_idx}. Fix: call optimizer.step(closure=optimizer_closure) "
            f"(or optimizer_closure() before optimizer.step()) in your optimizer_step."
        )
    if boundary:
        after_optimizer_step(trainer)
        state.needs_zero_grad = True
    return closure.outputs


def ends_accumulation(trainer: Trainer, batch_idx: int, is_last: bool) -> bool:
    """Whether this training batch ends an accumulation window, so that the optimizer steps after it."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or is_last


def engine_accumulates(trainer: Trainer) -> bool:
    """Whether the strategy's engine does gradient accumulation itself (DeepSpeed), rather than the loop."""
    return getattr(trainer.fabric.strategy, "name", None) == "deepspeed" and trainer.accumulate_grad_batches > 1


class TrainingClosure:
    """training_step + zero_grad + backward (+ the pre-step hooks and clipping at a step): what ``optimizer_closure`` is.

    Calling it returns the backpropagated loss (divided by ``accumulate_grad_batches``, detached) or None when
    ``training_step`` returned None (then nothing is backpropagated). ``outputs`` keeps what training_step returned.
    """

    def __init__(self, trainer: Trainer, batch: Any, batch_idx: int, optimizer: Any, boundary: bool) -> None:
        self.trainer, self.batch, self.batch_idx, self.optimizer, self.boundary = trainer, batch, batch_idx, optimizer, boundary
        self.outputs: Any = None
        self.ran = False

    def __call__(self) -> Any:
        trainer, batch_idx, optimizer = self.trainer, self.batch_idx, self.optimizer
        state = trainer.state
        model = state.lightning_module
        accumulate = trainer.accumulate_grad_batches
        self.outputs = call_step(trainer, "training_step", self.batch, batch_idx)
        self.ran = True
        loss = loss_of(self.outputs)
        if batch_idx % accumulate == 0 or state.needs_zero_grad:
            call_hook(trainer, "on_before_zero_grad", optimizer)
            model.optimizer_zero_grad(state.current_epoch, batch_idx, optimizer)
            state.needs_zero_grad = False
        scaled = None
        if loss is not None:
            scaled = loss / accumulate if accumulate > 1 and not engine_accumulates(trainer) else loss
            call_hook(trainer, "on_before_backward", scaled)
            model.backward(scaled)
            call_hook(trainer, "on_after_backward")
        if self.boundary:
            fabric_model = state.model
            if trainer.fabric.strategy.precision.scales_loss() and loss is not None:
                # As in Lightning, hooks see unscaled gradients under a GradScaler: clipping at an infinite norm
                # unscales them (once per step; the real clipping after the hook does not unscale again).
                trainer.fabric.clip_gradients(fabric_model, optimizer, max_norm=float("inf"), error_if_nonfinite=False)
            call_hook(trainer, "on_before_optimizer_step", optimizer)
            call_module(trainer, "configure_gradient_clipping", optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        return None if scaled is None else scaled.detach()


def after_optimizer_step(trainer: Trainer) -> None:
    """Count the step and run the step-interval schedulers (automatic optimisation)."""
    trainer.state.global_step += 1
    update_schedulers(trainer, "step", plateau=True)


def update_schedulers(trainer: Trainer, interval: str, *, plateau: bool) -> None:
    """Step the schedulers of ``interval`` whose frequency is due (ReduceLROnPlateau with its monitored metric).

    Under manual optimisation none is stepped: the user calls ``self.lr_schedulers().step()``, as in Lightning.
    """
    state = trainer.state
    if state.lightning_module is not None and not state.lightning_module.automatic_optimization:
        return
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
            state.lightning_module.lr_scheduler_step(config.scheduler, float(value))
        else:
            state.lightning_module.lr_scheduler_step(config.scheduler, None)


class LightningOptimizer:
    """What ``self.optimizers()`` returns and ``optimizer_step`` receives: the set-up optimizer behind a proxy.

    Each instance is of a class made for the optimizer's own class (``LightningSGD`` subclasses the Fabric-wrapped
    ``SGD``), so ``isinstance(opt, torch.optim.Optimizer)`` and ``isinstance(opt, torch.optim.SGD)`` hold, which
    Lightning's own proxy does not offer; attributes it lacks (``param_groups``, ``state``, ``defaults``) are the
    set-up optimizer's. ``step(closure)`` runs the closure and then steps through Fabric (precision, strategy); under
    manual optimisation it also calls ``on_before_optimizer_step`` after the closure and counts one
    ``global_step`` per call, as Lightning does. ``optimizer`` is the plain torch optimizer.
    """

    __slots__ = ()

    @property
    def optimizer(self) -> Optimizer:
        return unwrap(self.__dict__["_lightning_target"])

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        target, trainer = self.__dict__["_lightning_target"], self.__dict__["_lightning_trainer"]
        if closure is not None and not callable(closure):
            raise ConfigurationError(
                f"optimizer.step(closure={closure!r}): the closure must be callable. Fix: pass a function that computes "
                f"the loss and calls self.manual_backward(loss) (or nothing: optimizer.step())."
            )
        module = trainer.lightning_module
        manual = module is not None and not module.automatic_optimization
        if manual:
            user_closure = closure

            def closure() -> Any:  # Lightning's order: the closure's backward, then the pre-step hook
                output = user_closure() if user_closure is not None else None
                call_hook(trainer, "on_before_optimizer_step", target)
                return output

        output = _step(trainer, target, closure, skip_without_loss=not manual, **kwargs)
        if manual:
            trainer.state.global_step += 1  # Lightning counts every optimizer.step() under manual optimisation
        return output

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.__dict__["_lightning_target"].zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.__dict__["_lightning_target"].state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__["_lightning_target"].load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_lightning_"):
            raise AttributeError(name)
        return getattr(self.__dict__["_lightning_target"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_lightning_target"], name, value)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self.optimizer!r})"

    def __reduce__(self) -> Any:
        # The class is made at run time (no importable name): pickle and deepcopy rebuild it from the two references.
        return _make_proxy, (self.__dict__["_lightning_target"], self.__dict__["_lightning_trainer"])


def _step(trainer: Trainer, target: Any, closure: Any, *, skip_without_loss: bool, **kwargs: Any) -> Any:
    """Step ``target`` (a Fabric-set-up optimizer) after ``closure``: inside ``step`` where a plain torch step can take a
    closure (LBFGS re-evaluates it), else first (a GradScaler or DeepSpeed's engine takes none)."""
    if closure is None:
        return target.step(**kwargs)
    if getattr(target, "_plain_step", False):
        return target.step(closure=closure, **kwargs)
    loss = closure()
    if loss is None and skip_without_loss and trainer.fabric.strategy.precision.scales_loss():
        return None  # training_step returned None: nothing was backpropagated for a GradScaler to step
    target.step(**kwargs)
    return loss


@functools.lru_cache(maxsize=None)
def _proxy_class(optimizer_class: type) -> type:
    name = optimizer_class.__name__.removeprefix("Fabric")
    return type(f"Lightning{name}", (LightningOptimizer, optimizer_class), {"__module__": __name__})


def lightning_optimizers(trainer: Trainer) -> list[Any]:
    """One proxy per set-up optimizer, made once per run (``self.optimizers()`` returns the same objects each call)."""
    targets = trainer.state.optimizers
    cached = trainer.__dict__.get("_lightning_optimizers")
    if cached is not None and len(cached) == len(targets) and all(
            proxy.__dict__["_lightning_target"] is target for proxy, target in zip(cached, targets)):
        return cached
    proxies = [_make_proxy(target, trainer) for target in targets]
    trainer.__dict__["_lightning_optimizers"] = proxies
    return proxies


def _make_proxy(target: Any, trainer: Trainer) -> Any:
    proxy = object.__new__(_proxy_class(type(target)))
    proxy.__dict__["_lightning_target"] = target
    proxy.__dict__["_lightning_trainer"] = trainer
    return proxy


def inner_optimizer(optimizer: Any) -> Any:
    """The Fabric-set-up optimizer behind a :class:`LightningOptimizer` (any other optimizer as it is)."""
    return optimizer.__dict__["_lightning_target"] if isinstance(optimizer, LightningOptimizer) else optimizer
