"""Seeding: one call seeds Python, NumPy (when installed) and torch, and dataloader workers get distinct seeds.

The seed is handed to child processes through the documented ``FABRIC_LITE_GLOBAL_SEED`` and
``FABRIC_LITE_SEED_WORKERS`` variables so that processes started by a launcher seed the same way.
"""

from __future__ import annotations

import os
import random
from typing import Any

import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.utilities.console import configure_logger
from fabric_lite.utilities.rank_zero import rank_zero_info, rank_zero_only

SEED_VARIABLE = "FABRIC_LITE_GLOBAL_SEED"
WORKERS_VARIABLE = "FABRIC_LITE_SEED_WORKERS"
_MAX_SEED = 2**32 - 1

configure_logger()  # "Seed set to N" shows by default (this module is imported by ``import fabric_lite``)


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, ``numpy.random`` and ``torch`` (all devices) and return the seed used.

    Args:
        seed: the seed; ``None`` reads ``FABRIC_LITE_GLOBAL_SEED`` or falls back to 0.
        workers: also give every dataloader worker a distinct, reproducible seed
            (applied by ``Fabric.setup_dataloaders``).
        verbose: log ``Seed set to N`` on rank zero (the ``fabric_lite`` logger, INFO; shown on stderr by default).

    Example:
        >>> seed_everything(7, verbose=False)
        7
    """
    if seed is None:
        text = os.environ.get(SEED_VARIABLE, "0")
        try:
            seed = int(text)
        except ValueError:
            raise ConfigurationError(
                f"{SEED_VARIABLE}={text!r} is not an integer seed. Fix: set it to a number between 0 and {_MAX_SEED}."
            ) from None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
        raise ConfigurationError(
            f"seed_everything(seed={seed!r}) is out of range: seeds must be integers between 0 and {_MAX_SEED}. "
            f"Fix: pass a seed in that range, e.g. seed_everything(42)."
        )
    if verbose:
        rank_zero_info(f"Seed set to {seed}")
    os.environ[SEED_VARIABLE] = str(seed)
    os.environ[WORKERS_VARIABLE] = "1" if workers else "0"
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def reset_seed() -> None:
    """Re-apply the seed recorded by :func:`seed_everything` (used in freshly started processes)."""
    seed = os.environ.get(SEED_VARIABLE)
    if seed is not None:
        seed_everything(int(seed), workers=os.environ.get(WORKERS_VARIABLE) == "1", verbose=False)


def worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """Seed one dataloader worker from (global seed, rank, worker id) so that no two workers share a stream."""
    global_rank = rank if rank is not None else rank_zero_only.rank  # type: ignore[attr-defined]
    base = torch.initial_seed() - worker_id  # torch seeds each worker with base_seed + worker_id
    sequence = [base, worker_id, global_rank]
    ss = _seed_sequence(sequence)
    torch.manual_seed(ss[0])
    random.seed(ss[1])
    try:
        import numpy as np

        np.random.seed(ss[2] & _MAX_SEED)
    except ImportError:
        pass


def _seed_sequence(entropy: list[int]) -> list[int]:
    # Mix (base seed, worker id, rank) through torch's own generator into three independent seeds.
    mixed = 0
    for item in entropy:
        mixed = (mixed * 1_000_003 + (item & 0xFFFFFFFFFFFF)) % (2**63 - 1)
    generator = torch.Generator().manual_seed(mixed)
    return torch.randint(0, 2**62, (3,), generator=generator).tolist()


class WorkerInit:
    """Picklable worker_init_fn: seeds the worker, then calls the user's own worker_init_fn if any."""

    def __init__(self, rank: int, user_fn: Any = None) -> None:
        self.rank = rank
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        worker_init_function(worker_id, self.rank)
        if self.user_fn is not None:
            self.user_fn(worker_id)
