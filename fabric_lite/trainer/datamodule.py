"""LightningDataModule: where the data comes from (prepare once, set up per process, one dataloader per stage)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.hooks import DataHooks

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


class LightningDataModule(DataHooks):
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

    def __init__(self) -> None:
        self.trainer: Trainer | None = None

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
