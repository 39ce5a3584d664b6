"""LearningRateFinder and BatchSizeFinder: the tuner (``fabric_lite.trainer.tuning``) run as callbacks at the start of fit.

Lightning's callbacks of the same names. Each runs its trials inside ``trainer.fit`` (weights, optimizer
state, RNG and Trainer state are put back afterwards, as with :class:`~fabric_lite.trainer.Tuner`), then
makes the fit use the result: the optimizers are configured again with the new learning rate, or the
loaders are built again with the new batch size. Subclass and call :meth:`lr_find` / :meth:`scale_batch_size`
from another hook (``on_train_epoch_start``) to tune again later, as in Lightning's examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_lite.errors import ConfigurationError, choices_error
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.flags import BATCH_SIZE_MODES
from fabric_lite.trainer.tuning.lr_finder import LR_MODES

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer
    from fabric_lite.trainer.tuning.lr_finder import LRFinder


def _raw_loader(loader: Any) -> Any:
    """The user's DataLoader behind a Fabric-set-up one (a trial sets it up again itself)."""
    return getattr(loader, "dataloader", loader)


def _keep_settings(finder: Callback, name: str, modes: tuple[str, ...], **settings: Any) -> None:
    """What both finders' ``__init__`` do with their arguments: refuse a ``mode`` not in ``modes`` (the error names
    ``name(mode=...)``), then keep every setting as ``finder._<setting>`` (``finder._mode``, ``finder._min_lr``, ...)."""
    mode = settings["mode"]
    if mode not in modes:
        raise choices_error(asked=f"{name}(mode={mode!r})", kind="mode", choices=modes)
    for key, value in settings.items():
        setattr(finder, f"_{key}", value)


class LearningRateFinder(Callback):
    """Run the learning-rate range test when ``fit`` starts and train with its suggestion.

    Args:
        min_lr, max_lr: the range the learning rate sweeps.
        num_training_steps: steps of the sweep.
        mode: ``"exponential"`` or ``"linear"`` growth.
        early_stop_threshold: stop the sweep once the loss exceeds this many times the best (None: never).
        update_attr: write the suggestion to the model (``lr`` / ``learning_rate`` or ``attr_name``).
        attr_name: the attribute to write.

    After the run, ``optimal_lr`` is the :class:`~fabric_lite.trainer.tuner.LRFinder` (``results``,
    ``suggestion()``, ``plot()``).
    """

    SUPPORTED_MODES = LR_MODES

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1, num_training_steps: int = 100, mode: str = "exponential",
                 early_stop_threshold: float | None = 4.0, update_attr: bool = True, attr_name: str = "") -> None:
        _keep_settings(self, "LearningRateFinder", LR_MODES, min_lr=min_lr, max_lr=max_lr,
                       num_training_steps=num_training_steps, mode=mode, early_stop_threshold=early_stop_threshold,
                       update_attr=update_attr, attr_name=attr_name)
        self.optimal_lr: LRFinder | None = None

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run the sweep now (inside a fit), then configure the fit's optimizers again with the suggestion."""
        from fabric_lite.trainer.loops import setup
        from fabric_lite.trainer.tuning import lr_finder

        datamodule = trainer.datamodule
        train = None if datamodule is not None else _raw_loader(trainer.train_dataloader)
        self.optimal_lr = lr_finder.lr_find(
            trainer, pl_module, train, None, None, datamodule, "fit", self._min_lr, self._max_lr, self._num_training_steps,
            self._mode, self._early_stop_threshold, self._update_attr, self._attr_name, False)
        if self.optimal_lr is not None and self._update_attr and self.optimal_lr.suggestion() is not None:
            setup.setup_model(trainer, pl_module, with_optimizers=True)  # configure_optimizers reads the new rate

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.lr_find(trainer, pl_module)


class BatchSizeFinder(Callback):
    """Find the largest batch size that fits in memory when ``fit`` starts, and train with it.

    Args:
        mode: ``"power"`` (double until out of memory) or ``"binsearch"`` (then bisect).
        steps_per_trial: training steps per tried size.
        init_val: the first size tried.
        max_trials: at most this many sizes.
        batch_arg_name: the attribute (model, its hparams, or the data module) that ``train_dataloader()`` reads.

    The loaders must be made by ``train_dataloader()`` (model or data module) from that attribute; loaders
    passed to ``fit`` cannot change their batch size. ``optimal_batch_size`` holds the size found.
    """

    SUPPORTED_MODES = BATCH_SIZE_MODES

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size") -> None:
        _keep_settings(self, "BatchSizeFinder", BATCH_SIZE_MODES, mode=mode, steps_per_trial=steps_per_trial,
                       init_val=init_val, max_trials=max_trials, batch_arg_name=batch_arg_name)
        self.optimal_batch_size: int | None = init_val

    def scale_batch_size(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Search now (inside a fit), then build the fit's loaders again with the size found."""
        from fabric_lite.trainer.loops import setup
        from fabric_lite.trainer.tuning import batch_size

        if setup.source(trainer, "train_dataloader") is None:
            raise ConfigurationError(
                "BatchSizeFinder found no train_dataloader() on the model or data module: loaders passed to "
                "trainer.fit(model, loader) cannot change their batch size. Fix: build the loader in "
                f"train_dataloader() from self.{self._batch_arg_name} and call trainer.fit(model) (or datamodule=dm)."
            )
        found = batch_size.scale_batch_size(
            trainer, pl_module, None, None, None, trainer.datamodule, "fit", self._mode, self._steps_per_trial,
            self._init_val, self._max_trials, self._batch_arg_name)
        if found is None:
            return
        self.optimal_batch_size = found
        state = trainer.state
        state.train_dataloader = setup.setup_loader(trainer, setup.source(trainer, "train_dataloader"), train=True)
        state.num_training_batches = setup.limited(state.train_dataloader, trainer.limit_train_batches, "limit_train_batches")
        val = setup.source(trainer, "val_dataloader")
        if val is not None:
            state.val_dataloaders = [setup.setup_loader(trainer, d, train=False) for d in setup.as_list(val)]
            state.num_val_batches = [setup.limited(d, trainer.limit_val_batches, "limit_val_batches") for d in state.val_dataloaders]
        state.val_check_batch = setup.compute_val_check_batch(trainer)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.scale_batch_size(trainer, pl_module)
