"""LightningModule: the user's model with the six sections (set-up, train/val/test/predict steps, optimizers) and hooks.

Same names as ``lightning.pytorch.LightningModule`` so that a script ports with an import swap. The
module knows its Trainer while a run is under way; everything device-, precision- or process-related
goes through the Trainer's public :class:`~fabric_lite.Fabric`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

import torch
from torch import nn

from fabric_lite.errors import CheckpointError, ConfigurationError, UsageError
from fabric_lite.trainer.hooks import ModelHooks
from fabric_lite.trainer.hparams import AttributeDict, HyperparametersMixin, restricted_classmethod
from fabric_lite.trainer.module_logging import LoggingMixin
from fabric_lite.trainer.module_optimization import OptimizationMixin
from fabric_lite.utilities.apply_func import move_data_to_device

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric
    from fabric_lite.trainer.trainer import Trainer


class LightningModule(LoggingMixin, OptimizationMixin, HyperparametersMixin, ModelHooks, nn.Module):
    """Base class of a model run by :class:`~fabric_lite.trainer.Trainer`.

    Override ``training_step`` and ``configure_optimizers`` (plus ``validation_step``, ``test_step``,
    ``predict_step`` and any hook as needed). Inside, ``self.log(...)`` records metrics, ``self.device``
    is the process's device and ``self.trainer`` the running Trainer.

    Example:
        >>> class Regressor(LightningModule):
        ...     def __init__(self, lr=0.1):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self.layer = torch.nn.Linear(2, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         loss = torch.nn.functional.mse_loss(self.layer(x), y)
        ...         self.log("train_loss", loss)
        ...         return loss
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        >>> Regressor().hparams
        {'lr': 0.1}
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._automatic_optimization = True
        self._hparams = AttributeDict()
        self._hparams_initial = AttributeDict()
        self._toggled: dict[nn.Parameter, bool] | None = None
        #: whether fit logs ``hparams`` to the loggers (``save_hyperparameters(logger=False)`` turns it off)
        self.log_hyperparams_at_fit = True
        self.example_input_array: Any = None
        #: the default ``strict`` of ``load_from_checkpoint`` (Lightning's name)
        self.strict_loading = True

    #: properties TorchScript must not compile (reading ``trainer`` outside a run raises); Lightning lists its own too
    __jit_unused_properties__: list[str] = [
        "trainer", "fabric", "device", "dtype", "current_epoch", "global_step", "global_rank", "local_rank", "logger",
        "loggers", "on_gpu", "automatic_optimization", "hparams", "hparams_initial",
    ]

    #: checkpoint keys of the hyperparameters (Lightning's constants)
    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"

    # ------------------------------------------------------------------------------ the trainer and its state
    @property
    def trainer(self) -> Trainer:
        """The Trainer running this module (only during ``fit``/``validate``/``test``/``predict`` and after)."""
        if self._trainer is None and not self.__dict__.get("_jit_is_scripting", False):
            raise UsageError(
                f"{type(self).__name__}.trainer was read, but the module is not attached to a Trainer. "
                f"Fix: run it with Trainer().fit(model) (or validate/test/predict) first."
            )
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        self._trainer = trainer

    @property
    def fabric(self) -> Fabric:
        """The Trainer's Fabric (devices, precision, collectives)."""
        trainer = self.trainer
        return None if trainer is None else trainer.fabric  # None only while TorchScript reads every attribute

    @property
    def device(self) -> torch.device:
        """The device of this process (before a run: where the parameters are)."""
        if self._trainer is not None:
            return self._trainer.fabric.device
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            return tensor.dtype
        return torch.get_default_dtype()

    @property
    def current_epoch(self) -> int:
        return 0 if self._trainer is None else self._trainer.current_epoch

    @property
    def global_step(self) -> int:
        return 0 if self._trainer is None else self._trainer.global_step

    @property
    def global_rank(self) -> int:
        return 0 if self._trainer is None else self._trainer.global_rank

    @property
    def local_rank(self) -> int:
        return 0 if self._trainer is None else self._trainer.local_rank

    @property
    def logger(self) -> Any:
        return None if self._trainer is None else self._trainer.logger

    @property
    def loggers(self) -> list[Any]:
        return [] if self._trainer is None else self._trainer.loggers

    @property
    def on_gpu(self) -> bool:
        """Whether the module runs on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def automatic_optimization(self) -> bool:
        """True (default): the Trainer calls backward, steps and zeroes. False: ``training_step`` does it."""
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    # ------------------------------------------------------------------------------ hyperparameters, checkpoints
    # save_hyperparameters, hparams, hparams_initial: HyperparametersMixin (shared with LightningDataModule)

    @restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike[str] | IO[bytes],
        map_location: Any = None,
        hparams_file: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new module built from a Trainer checkpoint: ``cls(**saved hparams, **kwargs)``, then its weights.

        The checkpoint's ``hyper_parameters`` (what ``self.save_hyperparameters()`` stored) are the ``__init__``
        arguments, ``hparams_file`` (a logger's hparams.yaml) replaces them and ``kwargs`` override both.
        ``on_load_checkpoint(checkpoint)`` runs before the weights load (``strict`` as in ``load_state_dict``;
        default ``self.strict_loading``, True). Tensors load to ``map_location`` (CPU by default) and the module
        is moved there. Call it on the class: ``model = LitModel.load_from_checkpoint(path)``.
        """
        model, checkpoint = cls._from_checkpoint("the module", checkpoint_path, map_location, hparams_file, weights_only, kwargs)
        weights = checkpoint.get("model", checkpoint.get("state_dict"))
        if not isinstance(weights, Mapping):
            raise CheckpointError(
                f"{cls.__name__}.load_from_checkpoint: the checkpoint holds no model weights (no 'model' or 'state_dict'; "
                f"keys: {', '.join(map(str, checkpoint)) or 'none'}). Fix: pass a file written by trainer.save_checkpoint "
                f"or ModelCheckpoint."
            )
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(weights, strict=model.strict_loading if strict is None else strict)
        device = next((t.device for t in weights.values() if isinstance(t, torch.Tensor)), None)
        return model.to(device) if device is not None else model

    def on_exception(self, exception: BaseException) -> None:
        """Called when fit / validate / test / predict ends with an exception (Ctrl-C included), after the callbacks'."""

    # ------------------------------------------------------------------------------ logging
    # log, log_dict: LoggingMixin (module_logging.py)

    # ------------------------------------------------------------------------------ the six sections
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward is not defined. Fix: define forward(self, x) or call a sub-module.")

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigurationError(
            f"{type(self).__name__} has no training_step, so Trainer.fit has nothing to run. "
            f"Fix: define training_step(self, batch, batch_idx) returning the loss."
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigurationError(
            f"Trainer.test needs {type(self).__name__}.test_step. Fix: define test_step(self, batch, batch_idx)."
        )

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Default: ``self(batch)`` (or ``self(batch[0])`` for an ``(x, y)`` batch)."""
        if isinstance(batch, (list, tuple)) and batch:
            return self(batch[0])
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise ConfigurationError(
            f"{type(self).__name__} has no configure_optimizers, so Trainer.fit has nothing to step. "
            f"Fix: def configure_optimizers(self): return torch.optim.Adam(self.parameters())."
        )

    def configure_model(self) -> None:
        """Create layers here to have them made on the device and in the precision's dtype (``fabric.init_module``).

        Called once per stage before the model is set up, after ``setup(stage)``; make it idempotent
        (``if self.layer is not None: return``), as Lightning asks, since fit then test calls it again.
        """

    def configure_sharded_model(self) -> None:
        """Lightning's older name of ``configure_model`` (called too, for modules written before 2.1)."""

    def configure_callbacks(self) -> Any:
        """Callbacks the model adds to the Trainer's (replacing any of the same type)."""
        return []

    # ------------------------------------------------------------------------------ batch transfer
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    # ------------------------------------------------------------------------------ optimisation
    # optimizers, lr_schedulers, manual_backward, backward, toggle_optimizer / untoggle_optimizer / toggled_optimizer,
    # clip_gradients, configure_gradient_clipping, optimizer_zero_grad, optimizer_step, lr_scheduler_step:
    # OptimizationMixin (module_optimization.py)

    # ------------------------------------------------------------------------------ utilities
    def freeze(self) -> None:
        """No gradients for any parameter, and eval mode (for inference or a frozen backbone)."""
        for parameter in self.parameters():
            parameter.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        """Undo :meth:`freeze`: every parameter trainable again, and train mode."""
        for parameter in self.parameters():
            parameter.requires_grad = True
        self.train()

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only (the other processes stay quiet)."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather ``data`` (tensors, numbers or collections of them) from every process: ``fabric.all_gather``."""
        if self._trainer is None:
            return move_data_to_device(data, self.device) if isinstance(data, torch.Tensor) else data
        return self.trainer.fabric.all_gather(data, group=group, sync_grads=sync_grads)

    def to_torchscript(self, file_path: str | os.PathLike[str] | None = None, method: str = "script",
                       example_inputs: Any = None, **kwargs: Any) -> Any:
        """The module compiled by TorchScript (``method="script"``, or ``"trace"`` with ``example_inputs`` or
        ``self.example_input_array``), in eval mode; saved to ``file_path`` when given."""
        was_training = self.training
        self.eval()
        self.__dict__["_jit_is_scripting"] = True  # TorchScript reads every attribute: trainer is None meanwhile
        try:
            if method == "script":
                compiled = torch.jit.script(self, **kwargs)
            elif method == "trace":
                inputs = example_inputs if example_inputs is not None else self.example_input_array
                if inputs is None:
                    raise ConfigurationError(
                        f"{type(self).__name__}.to_torchscript(method='trace') needs an input to trace with. "
                        f"Fix: pass example_inputs=..., or set self.example_input_array in __init__."
                    )
                compiled = torch.jit.trace(self, example_inputs=inputs, **kwargs)
            else:
                raise ConfigurationError(
                    f"{type(self).__name__}.to_torchscript(method={method!r}) is not a known method. Choose one of: script, trace."
                )
        finally:
            self.__dict__["_jit_is_scripting"] = False
            self.train(was_training)
        if file_path is not None:
            torch.jit.save(compiled, os.fspath(file_path))
        return compiled

    # ------------------------------------------------------------------------------ copies
    def __getstate__(self) -> dict[str, Any]:
        # copy.deepcopy (AveragedModel, EMA) and pickling must not drag the Trainer, its Fabric and loaders along.
        state = self.__dict__.copy()
        state["_trainer"] = None
        state["_toggled"] = None
        return state

