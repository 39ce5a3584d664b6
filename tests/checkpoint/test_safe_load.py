"""Safe loading: every place fabric_lite reads a checkpoint refuses a pickle that would run code, WITHOUT running it.

Audit of the readers (all ``weights_only=True`` unless the caller passes ``weights_only=False``):
``fabric.load`` / ``fabric.load_raw`` of a file (``checkpoint.io.load_checkpoint_file``), a sharded folder's
``meta.pt`` (``sharded.read_meta``), its DCP ``.metadata`` and non-tensor entries (``safe_dcp``: DCP itself
would use ``pickle.load`` and ``torch.load(weights_only=False)``), and ``consolidate``. fabric_lite's own
metadata (loader position, RNG states of Python / NumPy / torch, loop counters) is stored as plain ints,
lists and tensors, so plain ``torch.load(weights_only=True)`` reads it with no allow-list at all.
"""

from __future__ import annotations

import os
import random
import re

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric
from fabric_lite.checkpoint.safe_dcp import load_whole
from fabric_lite.checkpoint.sharded import MARKER, META_FILE, consolidate
from fabric_lite.errors import CheckpointError

REFUSED = "with weights_only=True"
OPT_IN = "weights_only=False"


class Payload:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def sharded_folder(path, *, extra=None, entry=None):
    """A real DCP folder as fabric_lite writes it (shards, meta.pt, marker), made in this one process."""
    state = {"model": {"weight": torch.ones(3, 2)}, "optimizer": {"param_groups": [{"lr": 0.1, "params": ["weight"]}],
                                                                  "state": {}}}
    if entry is not None:
        state["optimizer"]["param_groups"][0]["lr"] = entry  # a non-tensor entry: DCP pickles it
    dcp.save(state, checkpoint_id=path, no_dist=True)
    torch.save({"step": 3, "__fabric_lite__": {"version": "x", "sharded": {"modules": ["model"],
                                                                           "optimizers": ["optimizer"]}}, **(extra or {})},
               path / META_FILE)
    (path / MARKER).write_text("done\n")
    return path


def test_a_file_that_runs_code_is_refused_by_load_and_load_raw_without_running(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": Payload(marker), "step": 1}, tmp_path / "evil.ckpt")
    fabric = Fabric(accelerator="cpu")
    for load in (lambda: fabric.load(tmp_path / "evil.ckpt"), lambda: fabric.load_raw(tmp_path / "evil.ckpt", nn.Linear(1, 1)),
                 lambda: fabric.load(tmp_path / "evil.ckpt", {"step": 0})):
        with pytest.raises(CheckpointError, match=re.escape(REFUSED)) as info:
            load()
        assert OPT_IN in str(info.value) and "trust" in str(info.value)
        assert not marker.exists()
    fabric.load(tmp_path / "evil.ckpt", weights_only=False)  # the explicit opt-in does unpickle anything
    assert marker.exists()


def test_sharded_metadata_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    folder = sharded_folder(tmp_path / "ckpt")
    with open(folder / ".metadata", "wb") as handle:
        import pickle

        pickle.dump(Payload(marker), handle, protocol=4)  # DCP reads .metadata with plain pickle.load
    with pytest.raises(CheckpointError, match=re.escape(
        f"fabric.load refused to unpickle {str(folder / '.metadata')!r} of a sharded checkpoint {REFUSED}: global "
        f"'posix.system' is not allowed in checkpoint metadata. It may contain code that would run on load. Fix: if "
        f"you made this checkpoint yourself and trust it, load it with {OPT_IN}")):
        consolidate(folder, tmp_path / "out.pt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=re.escape("is not allowed in checkpoint metadata")):
        load_whole(folder)
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_sharded_non_tensor_entry_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    folder = sharded_folder(tmp_path / "ckpt", entry=Payload(marker))  # DCP would torch.load it with weights_only=False
    with pytest.raises(CheckpointError, match=re.escape(
        f"fabric.load refused to unpickle the entry 'optimizer.param_groups.0.lr' of a sharded checkpoint {REFUSED}")):
        consolidate(folder, tmp_path / "out.pt")
    assert not marker.exists()
    load_whole(folder, weights_only=False)  # the opt-in runs it
    assert marker.exists()


def test_sharded_meta_file_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    folder = sharded_folder(tmp_path / "ckpt", extra={"hook": Payload(marker)})
    with pytest.raises(CheckpointError, match=re.escape("refused to unpickle this file with weights_only=True")):
        consolidate(folder, tmp_path / "out.pt")
    assert not marker.exists()


def test_a_genuine_sharded_folder_consolidates_through_the_safe_readers(tmp_path):
    folder = sharded_folder(tmp_path / "ckpt")
    checkpoint = torch.load(consolidate(folder, tmp_path / "out.pt"), weights_only=True)
    assert torch.equal(checkpoint["model"]["weight"], torch.ones(3, 2)) and checkpoint["step"] == 3
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == 0.1


def test_fabric_lite_metadata_needs_no_allow_list(tmp_path):
    fabric = Fabric(accelerator="cpu")
    random.seed(1)
    np.random.seed(2)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state too
    model, optimizer = fabric.setup(nn.Linear(2, 1), torch.optim.Adam(nn.Linear(2, 1).parameters()))
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, shuffle=True,
                                                 generator=torch.Generator().manual_seed(3)))
    iterator = iter(loader)
    next(iterator)
    fabric.save(tmp_path / "a.ckpt", {"model": model, "optimizer": optimizer, "loader": loader, "step": 7})
    # Plain torch, weights_only=True, no safe_globals: only tensors, ints, floats, strings, lists and dicts inside.
    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=True)
    rng = checkpoint["loader"]["ranks"][0]["rng"]
    assert set(rng) >= {"python", "numpy", "torch", "generators"} and checkpoint["step"] == 7
    expected = (random.random(), np.random.rand(), torch.rand(1))
    fabric.load(tmp_path / "a.ckpt", {"loader": loader})  # restores the process's random state
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
