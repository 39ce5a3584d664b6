"""LightningDataModule: where the data comes from (prepare once, set up per process, one dataloader per stage)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from torch.utils.data import DataLoader, IterableDataset

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.hooks import DataHooks
from fabric_lite.trainer.hparams import HyperparametersMixin, restricted_classmethod

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


class LightningDataModule(HyperparametersMixin, DataHooks):
    """Group a dataset's preparation, splits and dataloaders (same names as ``lightning.pytorch.LightningDataModule``).

    ``prepare_data`` runs on one process (global rank 0, or local rank 0 of every node when
    ``prepare_data_per_node`` is true) before the others continue; ``setup(stage)`` runs on every process.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> class Random(LightningDataModule):
        ...     def setup(self, stage):
        ...         self.data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
        ...     def train_dataloader(self):
        ...         return DataLoader(self.data, batch_size=4)
        >>> dm = Random(); dm.setup("fit"); len(dm.train_dataloader())
        2
    """

    prepare_data_per_node: bool = True
    _hparams_key = "datamodule_hyper_parameters"
    _hparams_name_key = "datamodule_hparams_name"
    #: set by the Trainer while it runs with this data module
    trainer: Trainer | None = None
    name: str | None = None

    def __init__(self) -> None:
        self.trainer = None

    # save_hyperparameters(), hparams, hparams_initial: HyperparametersMixin (as on LightningModule)

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Any = None,
        val_dataset: Any = None,
        test_dataset: Any = None,
        predict_dataset: Any = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> Any:
        """A data module serving the given datasets (each may be a list or dict of datasets): one DataLoader per
        dataset with ``batch_size`` and ``num_workers`` (shuffled for training, unless iterable-style), which are
        also passed to ``__init__`` when it takes them; ``datamodule_kwargs`` go to ``__init__``."""

        def loaders(datasets: Any, shuffle: bool) -> Any:
            if isinstance(datasets, Mapping):
                return {key: loaders(value, shuffle) for key, value in datasets.items()}
            if isinstance(datasets, (list, tuple)):
                return [loaders(value, shuffle) for value in datasets]
            return DataLoader(datasets, batch_size=batch_size, num_workers=num_workers,
                              shuffle=shuffle and not isinstance(datasets, IterableDataset))

        parameters = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        special = {k: v for k, v in {"batch_size": batch_size, "num_workers": num_workers}.items() if takes_any or k in parameters}
        datamodule = cls(**datamodule_kwargs, **special)
        for hook, datasets, shuffle in (("train_dataloader", train_dataset, True), ("val_dataloader", val_dataset, False),
                                        ("test_dataloader", test_dataset, False), ("predict_dataloader", predict_dataset, False)):
            if datasets is not None:
                setattr(datamodule, hook, lambda datasets=datasets, shuffle=shuffle: loaders(datasets, shuffle))
        return datamodule

    def _missing(self, name: str) -> Any:
        raise ConfigurationError(
            f"{type(self).__name__}.{name}() is not defined, but this run needs it. "
            f"Fix: define {name}(self) returning a DataLoader, or pass the dataloader to the Trainer method directly."
        )

    def train_dataloader(self) -> Any:
        return self._missing("train_dataloader")

    def val_dataloader(self) -> Any:
        return None

    def test_dataloader(self) -> Any:
        return self._missing("test_dataloader")

    def predict_dataloader(self) -> Any:
        return self._missing("predict_dataloader")

    def state_dict(self) -> dict[str, Any]:
        """Extra state to keep in checkpoints (empty by default)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def on_exception(self, exception: BaseException) -> None:
        """Called when fit / validate / test / predict ends with an exception (Ctrl-C included)."""

    @restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike[str] | IO[bytes],
        map_location: Any = None,
        hparams_file: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new data module built from a Trainer checkpoint: ``cls(**datamodule_hyper_parameters, **kwargs)``.

        The hyperparameters are those ``self.save_hyperparameters()`` stored in the data module's ``__init__``;
        ``hparams_file`` replaces them and ``kwargs`` override both; the data module's ``state_dict`` is loaded back.
        """
        datamodule, checkpoint = cls._from_checkpoint("the data module", checkpoint_path, map_location, hparams_file,
                                                      weights_only, kwargs)
        if isinstance(checkpoint.get("datamodule"), dict):
            datamodule.load_state_dict(checkpoint["datamodule"])
        return datamodule
