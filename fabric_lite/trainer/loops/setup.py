"""Setting a run up: attach model and data module, prepare_data / setup hooks, Fabric set-up of model, optimizers and loaders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, RandomSampler

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import flags as F
from fabric_lite.trainer.combined_loader import MODES, CombinedLoader, as_combined
from fabric_lite.trainer.loops.hooks import call_hook, call_module
from fabric_lite.trainer.module import LightningModule
from fabric_lite.trainer.optimizers import parse_optimizers
from fabric_lite.trainer.results import Results
from fabric_lite.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.datamodule import LightningDataModule
    from fabric_lite.trainer.trainer import Trainer

STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


def check_model(model: Any, method: str) -> None:
    if not isinstance(model, LightningModule):
        raise ConfigurationError(
            f"Trainer.{method}(model={type(model).__name__}) needs a fabric_lite.trainer.LightningModule. "
            f"Fix: subclass LightningModule (from fabric_lite.trainer import LightningModule)."
        )


def check_data(method: str, dataloaders: Any, datamodule: Any) -> None:
    if dataloaders is not None and datamodule is not None:
        raise ConfigurationError(
            f"Trainer.{method}(dataloaders, datamodule=...) got both. Fix: pass either dataloaders or datamodule."
        )


def model_for(trainer: Trainer, stage: str, model: LightningModule | None) -> LightningModule:
    """The model to evaluate: the one passed, or the Trainer's last one."""
    if model is None:
        if trainer.lightning_module is None:
            raise ConfigurationError(
                f"Trainer.{stage}() got no model and this Trainer has not run one yet. Fix: trainer.{stage}(model, ...)."
            )
        return trainer.lightning_module
    check_model(model, stage)
    return model


def attach(trainer: Trainer, model: LightningModule, datamodule: LightningDataModule | None, stage: str) -> None:
    state = trainer.state
    model.trainer = trainer
    state.lightning_module = model
    state.datamodule = datamodule
    if datamodule is not None:
        datamodule.trainer = trainer
    state.stage = stage
    state.results = Results(trainer.fabric, state.callback_metrics)
    state.results.module = model
    state.results.stage = "train" if stage == "fit" else stage


def prepare_and_setup(trainer: Trainer, stage: str) -> None:
    """prepare_data on the right ranks (a barrier after it), then the data module's and everyone's ``setup`` hook."""
    model, datamodule = trainer.lightning_module, trainer.datamodule
    for target in (datamodule, model):
        if target is None:
            continue
        if (trainer.local_rank == 0) if target.prepare_data_per_node else trainer.is_global_zero:
            target.prepare_data()
    if trainer.world_size > 1:
        trainer.fabric.barrier("prepare_data")
    if datamodule is not None:
        datamodule.setup(stage)
    call_hook(trainer, "setup", stage)


def teardown(trainer: Trainer, stage: str) -> None:
    if trainer.datamodule is not None:
        trainer.datamodule.teardown(stage)
    call_hook(trainer, "teardown", stage)


def merge_model_callbacks(trainer: Trainer, model: LightningModule) -> None:
    """``configure_callbacks``: the model's callbacks replace the Trainer's of the same type."""
    extra = model.configure_callbacks() or []
    extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
    if extra:
        types = {type(c) for c in extra}
        trainer.callbacks = [c for c in trainer.callbacks if type(c) not in types] + extra


def source(trainer: Trainer, hook: str) -> Any:
    """The loaders of ``hook`` (``train_dataloader`` ...): the data module's, else the model's, else None."""
    if trainer.datamodule is not None:
        return getattr(trainer.datamodule, hook)()
    method = getattr(trainer.lightning_module, hook, None)
    return method() if callable(method) else None


def setup_model(trainer: Trainer, model: LightningModule, *, with_optimizers: bool) -> None:
    """Fabric-set-up of the model (once per model) and of the optimizers of ``configure_optimizers``."""
    state = trainer.state
    with trainer.fabric.init_module():  # layers made in configure_model land on the device, in the precision's dtype
        call_module(trainer, "configure_sharded_model")
        call_module(trainer, "configure_model")
    if with_optimizers:
        optimizers, configs = parse_optimizers(call_module(trainer, "configure_optimizers"))
        if not optimizers:
            rank_zero_warn("configure_optimizers returned no optimizer: fit runs training_step without stepping anything.")
        if len(optimizers) > 1 and model.automatic_optimization:
            raise ConfigurationError(
                f"configure_optimizers returned {len(optimizers)} optimizers, but automatic optimisation steps one. "
                f"Fix: set self.automatic_optimization = False in __init__ and step them in training_step "
                f"(opt_g, opt_d = self.optimizers(); self.manual_backward(loss); opt_g.step()), or return one optimizer."
            )
    else:
        optimizers, configs = [], []
    if state.setup_for is not model:
        if optimizers:
            _clipping_into_deepspeed(trainer)
            _accumulation_into_deepspeed(trainer)
        set_up = trainer.fabric.setup(model, *optimizers)
        fabric_model, fabric_optimizers = (set_up, []) if not optimizers else (set_up[0], list(set_up[1:]))
        for name in STEP_METHODS:
            fabric_model.mark_forward_method(name)
        state.model, state.setup_for = fabric_model, model
    else:
        fabric_optimizers = []
        if optimizers:
            wrapped = trainer.fabric.setup_optimizers(*optimizers)
            fabric_optimizers = list(wrapped) if isinstance(wrapped, tuple) else [wrapped]
    if with_optimizers:
        state.optimizers = fabric_optimizers
        state.lr_scheduler_configs = configs


def _clipping_into_deepspeed(trainer: Trainer) -> None:
    """Under DeepSpeed the engine clips inside its step: the Trainer's ``gradient_clip_val`` goes into its config.

    (As in Lightning; ``fabric.clip_gradients`` cannot reach DeepSpeed's gradients, so the module's
    ``clip_gradients`` does nothing there.) A value the user set on the strategy or in its config wins.
    """
    import dataclasses

    strategy = trainer.fabric.strategy
    if getattr(strategy, "name", None) != "deepspeed" or not trainer.gradient_clip_val:
        return
    if (trainer.gradient_clip_algorithm or "norm") != "norm":
        raise ConfigurationError(
            f"Trainer(gradient_clip_algorithm={trainer.gradient_clip_algorithm!r}) cannot work under DeepSpeed: the "
            f"engine clips inside its own step, and only by the global norm. Fix: gradient_clip_algorithm='norm' "
            f"(or leave it out), or a strategy that clips by value (ddp, fsdp)."
        )
    options = strategy.options
    user_config = options.config or {}
    if options.gradient_clipping is None and "gradient_clipping" not in user_config:
        strategy.options = dataclasses.replace(options, gradient_clipping=float(trainer.gradient_clip_val))


def _accumulation_into_deepspeed(trainer: Trainer) -> None:
    """Under DeepSpeed the engine accumulates: ``accumulate_grad_batches`` becomes its ``gradient_accumulation_steps``.

    ZeRO reduces gradients inside every backward; two backward passes before one engine step at stage 1-2 kept only
    the last micro-batch's gradients (a silently different run). As in Lightning, the engine is told the count and
    the loop steps it on every batch (``loops/optimization.py``).
    """
    import dataclasses

    strategy = trainer.fabric.strategy
    accumulate = trainer.accumulate_grad_batches
    if getattr(strategy, "name", None) != "deepspeed" or accumulate == 1:
        return
    options = strategy.options
    given = options.gradient_accumulation_steps or (options.config or {}).get("gradient_accumulation_steps")
    if given is not None and int(given) != accumulate:
        raise ConfigurationError(
            f"Trainer(accumulate_grad_batches={accumulate}) and the DeepSpeed gradient_accumulation_steps={given} "
            f"disagree, so it is unclear how many batches make one update. Fix: set one of them only (or both equal)."
        )
    if given is None:
        strategy.options = dataclasses.replace(options, gradient_accumulation_steps=accumulate)


def setup_loader(trainer: Trainer, loader: Any, *, train: bool) -> Any:
    if isinstance(loader, DataLoader) and train and trainer.overfit_batches and isinstance(loader.sampler, RandomSampler):
        rank_zero_warn("Trainer(overfit_batches=...) turns shuffling of the training data off, so the same batches repeat.")
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last)
    if not isinstance(loader, DataLoader):
        return loader  # an iterable the user shards themselves
    # Batches are moved by the Trainer, between on_before_batch_transfer and on_after_batch_transfer.
    # Evaluation splits without padding so that each sample counts once, except where a forward pass is
    # itself a collective (sharded parameters): there every rank must run the same number of batches.
    even = train or trainer.fabric.strategy.collective_forward
    return trainer.fabric.setup_dataloaders(loader, move_to_device=False, even_batches=even,
                                            use_distributed_sampler=trainer.use_distributed_sampler)


def setup_train_data(trainer: Trainer, loaders: Any) -> tuple[Any, Any]:
    """Set the training data up: (what ``trainer.train_dataloader`` shows, what the fit loop iterates).

    A list, tuple or dict of loaders (or a CombinedLoader) is drawn from together, each loader set up by
    Fabric; the default mode is ``"max_size_cycle"`` and ``"sequential"`` is refused, as in Lightning.
    """
    combined = as_combined(loaders, "max_size_cycle")
    if combined is None:
        loader = setup_loader(trainer, loaders, train=True)
        return loader, loader
    if combined.mode == "sequential":
        raise ConfigurationError(
            "Trainer.fit got a CombinedLoader(mode='sequential') as training data, but training draws one batch from "
            "every loader per step and does not support the 'sequential' mode (as in Lightning). "
            f"Choose one of: {', '.join(m for m in MODES if m != 'sequential')}."
        )
    combined.flattened = [setup_loader(trainer, d, train=True) for d in combined.flattened]
    return combined.iterables, combined


def setup_eval_data(trainer: Trainer, loaders: Any) -> list[Any]:
    """Set evaluation / prediction data up: the loaders a pass runs one after another (``dataloader_idx`` order).

    A list, tuple or dict of loaders (or a ``"sequential"`` CombinedLoader) runs loader after loader; a
    CombinedLoader in another mode is one loader whose batches hold a batch of each.
    """
    if loaders is None:
        return []
    combined = as_combined(loaders, "sequential")
    if combined is None:
        return [setup_loader(trainer, loaders, train=False)]
    if combined.mode == "sequential":
        return [setup_loader(trainer, d, train=False) for d in combined.flattened]
    combined.flattened = [setup_loader(trainer, d, train=False) for d in combined.flattened]
    return [combined]


def compute_val_check_batch(trainer: Trainer) -> int | float:
    if not trainer.val_dataloaders or not any(trainer.num_val_batches):
        return float("inf")
    vci = trainer.val_check_interval
    if isinstance(vci, float):
        if trainer.num_training_batches == float("inf"):
            if vci != 1.0:
                raise F.bad("val_check_interval", vci, "is a fraction, but the training data has no length",
                            "pass a number of batches, e.g. val_check_interval=100.")
            return float("inf")
        return max(1, int(trainer.num_training_batches * vci))
    if trainer.check_val_every_n_epoch is not None and vci > trainer.num_training_batches:
        raise F.bad("val_check_interval", vci, f"is more than the {trainer.num_training_batches} training batches of an epoch",
                    f"pass at most {trainer.num_training_batches}, or check_val_every_n_epoch=None to count batches across epochs.")
    return vci


def as_list(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def limited(loader: Any, limit: float, flag: str) -> int | float:
    """How many batches of ``loader`` a ``limit_*_batches`` value lets run.

    A CombinedLoader gets the limit per loader (Lightning's rule), and its length per its mode follows.
    """
    if isinstance(loader, CombinedLoader):
        loader.limits = [limited(d, limit, flag) for d in loader.flattened]
        return loader.length()
    try:
        total: int | float = len(loader)
    except TypeError:
        total = float("inf")
    if F.is_int(limit):
        return min(int(limit), total)
    if total == float("inf"):
        if limit not in (0.0, 1.0):
            raise F.bad(flag, limit, "is a fraction, but the dataloader has no length", f"pass a number of batches, e.g. {flag}=100.")
        return total if limit == 1.0 else 0
    count = int(total * limit)
    if count == 0 and limit > 0 and total > 0:
        count = 1  # a small fraction of a small loader still runs one batch
    return count
