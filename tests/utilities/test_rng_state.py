"""utilities/rng_state.py, the one helper that captures and restores random state (also the Trainer's older form)."""

from __future__ import annotations

import io
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from fabric_lite.utilities.rng_state import capture_rng, restore_rng


def _draws(loader_generator: torch.Generator | None = None) -> tuple:
    extra = torch.rand(1, generator=loader_generator).item() if loader_generator is not None else None
    return random.random(), float(np.random.rand()), torch.rand(1).item(), extra


def test_capture_restore_round_trip_through_a_weights_only_file():
    sampler_generator = torch.Generator().manual_seed(3)
    loader = DataLoader(list(range(8)), sampler=RandomSampler(range(8), generator=sampler_generator))
    state = capture_rng(loader)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    first = _draws(sampler_generator)
    buffer.seek(0)
    restore_rng(torch.load(buffer, weights_only=True), loader)
    assert _draws(sampler_generator) == first


def test_restore_reads_the_state_in_the_trainers_older_form():
    # trainer/states.get_rng() kept random.getstate()'s tuple and NumPy's raw state: checkpoints written so load.
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    older = {"torch": torch.get_rng_state(), "python": (version, internal, gauss),
             "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]}
    first = _draws()
    restore_rng(older)
    assert _draws() == first


def test_restoring_nothing_changes_nothing():
    state = capture_rng()
    restore_rng(None)
    restore_rng({})
    after = _draws()
    restore_rng(state)
    assert _draws() == after
