"""Fabric's collectives on user data: numbers, tensors and collections of them, one tensor at a time.

Numbers become tensors on the process's device and every tensor goes through the strategy's collective
(``utilities/distributed.py`` underneath); ``rank_zero_first`` orders a block across ranks with barriers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any

import torch

from fabric_lite.utilities.apply_func import apply_to_collection, convert_to_tensors


def gather_collection(
    strategy: Any, data: Any, *, device: torch.device, group: Any | None = None, sync_grads: bool = False,
    same_shape: bool = False, stacked: bool = False,
) -> Any:
    """``strategy.all_gather`` of every tensor in ``data``, numbers first made tensors on ``device``.

    The strategy always stacks along a new first dimension (its contract); at world size 1 the one slice is
    taken back out unless ``stacked``, as ``Fabric.all_gather`` documents.
    """
    data = convert_to_tensors(data, device=device)
    # The strategy always stacks (its contract); in one process Fabric takes the one slice back out.
    unstack = not stacked and strategy.world_size == 1
    gather = strategy.all_gather

    def one(tensor: torch.Tensor) -> torch.Tensor:
        gathered = gather(tensor, group=group, sync_grads=sync_grads, same_shape=same_shape)
        return gathered[0] if unstack else gathered

    return apply_to_collection(data, torch.Tensor, one)


def reduce_collection(
    strategy: Any, data: Any, *, device: torch.device, group: Any | None = None, reduce_op: str | Any = "mean"
) -> Any:
    """``strategy.all_reduce`` of every tensor in ``data``, numbers first made tensors on ``device``."""
    data = convert_to_tensors(data, device=device)
    return apply_to_collection(data, torch.Tensor, strategy.all_reduce, group=group, reduce_op=reduce_op)


@contextlib.contextmanager
def rank_zero_first(rank: int, barrier: Callable[[str], Any]) -> Generator[None, None, None]:
    """Run the block on ``rank`` 0 first, then on the others: they wait at ``barrier`` until rank 0 is through."""
    if rank > 0:
        barrier("rank_zero_first")
    yield
    if rank == 0:
        barrier("rank_zero_first")
