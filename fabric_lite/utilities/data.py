"""Distributed sampler injection: give each rank its part of a DataLoader, keeping shuffle, seed and drop_last.

``DistributedSampler`` pads the last ranks with repeated samples so that every rank sees the same
number of batches (needed by DDP training). For evaluation, ``even_batches=False`` splits without
padding instead, so metrics summed over ranks count each sample exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, Sampler, SequentialSampler

from fabric_lite.errors import ConfigurationError
from fabric_lite.utilities.seed import SEED_VARIABLE, WORKERS_VARIABLE, WorkerInit


class UnpaddedDistributedSampler(DistributedSampler):
    """Like DistributedSampler, but rank ``r`` gets indices ``r, r + world, ...`` with no repeats.

    Ranks may get one sample (and so one batch) fewer than others: use it for evaluation loops that
    do not run a collective per batch.

    Example:
        >>> [list(UnpaddedDistributedSampler(range(5), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
        [[0, 2, 4], [1, 3]]
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, shuffle: bool = False, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self._ordered()[self.rank : self.total_size : self.num_replicas])

    def _ordered(self) -> list[int]:
        import torch

        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            return torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        return list(range(len(self.dataset)))  # type: ignore[arg-type]


class _SamplerIndices(Dataset):
    """The indices a user's sampler yields this epoch, viewed as a dataset so DistributedSampler can split them."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.indices: list[Any] = list(sampler)

    def refresh(self) -> None:
        self.indices = list(self.sampler)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Any:
        return self.indices[position]


class DistributedSamplerWrapper(DistributedSampler):
    """Split the output of any sampler across ranks (each rank gets every world_size-th index of it)."""

    def __init__(self, sampler: Sampler, *, num_replicas: int, rank: int, drop_last: bool = False) -> None:
        if not isinstance(sampler, Sized):
            raise ConfigurationError(
                f"fabric.setup_dataloaders cannot split the sampler {type(sampler).__name__} across ranks: it has no "
                f"len(). Fix: give it __len__, or pass use_distributed_sampler=False and shard the data yourself."
            )
        super().__init__(_SamplerIndices(sampler), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=drop_last)

    def __iter__(self) -> Iterator[Any]:
        self.dataset.refresh()  # type: ignore[attr-defined]  # the wrapped sampler may reshuffle per epoch
        return (self.dataset[position] for position in super().__iter__())


def global_seed() -> int:
    """The seed every rank shuffles with (``seed_everything``'s, else 0): identical on all ranks."""
    return int(os.environ.get(SEED_VARIABLE, "0"))


def distributed_sampler(dataloader: DataLoader, *, num_replicas: int, rank: int, even_batches: bool = True) -> Sampler:
    """The sampler that gives this rank its part of ``dataloader``, keeping shuffle, seed and drop_last."""
    sampler = dataloader.sampler
    shuffle = isinstance(sampler, RandomSampler)
    if isinstance(sampler, (SequentialSampler, RandomSampler)):
        if not even_batches:
            return UnpaddedDistributedSampler(dataloader.dataset, num_replicas, rank, shuffle=shuffle, seed=global_seed())
        return DistributedSampler(
            dataloader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=global_seed(),
            drop_last=dataloader.drop_last,
        )
    return DistributedSamplerWrapper(sampler, num_replicas=num_replicas, rank=rank, drop_last=dataloader.drop_last)


def needs_sampler(dataloader: DataLoader) -> bool:
    return not isinstance(dataloader.dataset, IterableDataset) and not isinstance(dataloader.sampler, DistributedSampler)


def with_sampler(dataloader: DataLoader, sampler: Sampler) -> DataLoader:
    """A copy of ``dataloader`` that draws from ``sampler`` (every other setting kept)."""
    batch_sampler = dataloader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        raise ConfigurationError(
            f"fabric.setup_dataloaders cannot split a DataLoader with a custom batch_sampler "
            f"({type(batch_sampler).__name__}) across ranks. Fix: make your batch sampler rank-aware and pass "
            f"use_distributed_sampler=False."
        )
    kwargs: dict[str, Any] = {
        "batch_size": dataloader.batch_size,
        "shuffle": False,
        "sampler": sampler,
        "num_workers": dataloader.num_workers,
        "collate_fn": dataloader.collate_fn,
        "pin_memory": dataloader.pin_memory,
        "drop_last": dataloader.drop_last,
        "timeout": dataloader.timeout,
        "worker_init_fn": dataloader.worker_init_fn,
        "multiprocessing_context": dataloader.multiprocessing_context,
        "generator": dataloader.generator,
        "persistent_workers": dataloader.persistent_workers,
        "pin_memory_device": dataloader.pin_memory_device,
    }
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
    if hasattr(dataloader, "in_order"):
        kwargs["in_order"] = dataloader.in_order
    try:
        return type(dataloader)(dataloader.dataset, **kwargs)
    except TypeError as error:
        raise ConfigurationError(
            f"fabric.setup_dataloaders could not re-create your {type(dataloader).__name__} with a distributed sampler "
            f"({error}). Fix: pass use_distributed_sampler=False and give it a DistributedSampler yourself."
        ) from None



def prepare_dataloader(
    dataloader: DataLoader, sampler_kwargs: dict[str, Any] | None, *, rank: int, even_batches: bool
) -> DataLoader:
    """Give each rank its share (when ``sampler_kwargs`` asks for it) and seed workers distinctly when asked."""
    if sampler_kwargs is not None and needs_sampler(dataloader):
        sampler = distributed_sampler(dataloader, even_batches=even_batches, **sampler_kwargs)
        dataloader = with_sampler(dataloader, sampler)
    if os.environ.get(WORKERS_VARIABLE) == "1" and dataloader.num_workers > 0:
        dataloader.worker_init_fn = WorkerInit(rank, dataloader.worker_init_fn)
    return dataloader


def optimizer_state_to(optimizer: Any, device: Any) -> None:
    """Move an optimizer's state tensors (not its step counters) to ``device``, in place."""
    for param_state in optimizer.state.values():
        for key, value in list(param_state.items()):
            if hasattr(value, "to") and key != "step":
                param_state[key] = value.to(device)
