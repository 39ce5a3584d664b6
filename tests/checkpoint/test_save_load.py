"""fabric.save / load / load_raw: round trips, strictness, filters, safe loading and atomic writes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from fabric_lite import Fabric
from fabric_lite.checkpoint.io import atomic_save
from fabric_lite.errors import CheckpointError, ConfigurationError


class Counter:
    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def trained(fabric, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model, opt = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(8, 4)).sum())
    opt.step()
    return model, opt


def test_round_trip_restores_everything_in_place(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, opt = trained(fabric)
    counter = Counter(7)
    path = tmp_path / "ckpt" / "last.ckpt"
    fabric.save(path, {"model": model, "optimizer": opt, "counter": counter, "step": 11, "extra": [1, "a"]})
    assert path.is_file() and os.listdir(path.parent) == ["last.ckpt"]

    fabric2 = Fabric(accelerator="cpu")
    model2, opt2 = trained(fabric2, seed=1)
    counter2 = Counter()
    state = {"model": model2, "optimizer": opt2, "counter": counter2, "step": 0}
    remainder = fabric2.load(path, state)
    assert remainder == {"extra": [1, "a"]}
    assert state["step"] == 11 and counter2.value == 7
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])


def test_load_without_state_returns_the_checkpoint(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, _ = trained(fabric)
    fabric.save(tmp_path / "a.ckpt", {"model": model, "step": 3})
    checkpoint = fabric.load(tmp_path / "a.ckpt")
    assert set(checkpoint) == {"model", "step"}
    assert set(checkpoint["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    # plain torch can read it too
    raw = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert raw["step"] == 3


def test_strict_loading_reports_missing_keys(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, _ = trained(fabric)
    fabric.save(tmp_path / "a.ckpt", {"model": model})
    state = {"model": model, "scheduler_step": 0}
    with pytest.raises(CheckpointError, match=re.escape("cannot restore 'scheduler_step': the checkpoint has no such key (it has: 'model')")):
        fabric.load(tmp_path / "a.ckpt", state)
    assert fabric.load(tmp_path / "a.ckpt", state, strict=False) == {}
    assert state["scheduler_step"] == 0


def test_strict_false_allows_partial_module_state(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, _ = trained(fabric)
    fabric.save(tmp_path / "a.ckpt", {"model": model}, filter={"model": lambda name, value: name.startswith("0.")})
    assert set(fabric.load(tmp_path / "a.ckpt")["model"]) == {"0.weight", "0.bias"}
    with pytest.raises(CheckpointError, match=re.escape("it was saved from a different model (the checkpoint lacks 2.weight, 2.bias)")):
        fabric.load(tmp_path / "a.ckpt", {"model": model})
    fabric.load(tmp_path / "a.ckpt", {"model": model}, strict=False)


def test_filter_errors(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, _ = trained(fabric)
    with pytest.raises(ConfigurationError, match=re.escape("fabric.save(..., filter={'modle'}) must map keys of the state to callables")):
        fabric.save(tmp_path / "a.ckpt", {"model": model}, filter={"modle": lambda n, v: True})
    with pytest.raises(ConfigurationError, match=re.escape("fabric.save(path, state=list) needs a dict of named objects.")):
        fabric.save(tmp_path / "a.ckpt", [model])
    with pytest.raises(ConfigurationError, match=re.escape("the state key '__fabric_lite__' is reserved")):
        fabric.save(tmp_path / "a.ckpt", {"__fabric_lite__": 1})
    assert not (tmp_path / "a.ckpt").exists()


def test_load_raw_module_and_optimizer(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, opt = trained(fabric)
    torch.save(model.module.state_dict(), tmp_path / "weights.pt")
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    model2, opt2 = trained(Fabric(accelerator="cpu"), seed=5)
    fabric.load_raw(tmp_path / "weights.pt", model2)
    fabric.load_raw(tmp_path / "opt.pt", opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert opt2.state_dict()["state"][0]["step"] == 1
    fabric.save(tmp_path / "full.ckpt", {"model": model})
    with pytest.raises(CheckpointError, match=re.escape("got a fabric_lite checkpoint (a dict of named objects), not a raw state dict")):
        fabric.load_raw(tmp_path / "full.ckpt", model2)


def test_load_of_a_raw_state_dict_points_to_load_raw(tmp_path):
    torch.save(torch.ones(2), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=re.escape("expected a dict of named objects but the file holds a Tensor")):
        Fabric(accelerator="cpu").load(tmp_path / "t.pt", {"x": 1})


def test_numpy_values_load_with_weights_only(tmp_path):
    fabric = Fabric(accelerator="cpu")
    state = {"rng": np.random.get_state(), "array": np.arange(3.0)}
    fabric.save(tmp_path / "np.ckpt", state)
    loaded = fabric.load(tmp_path / "np.ckpt")
    assert np.array_equal(loaded["array"], np.arange(3.0)) and np.array_equal(loaded["rng"][1], state["rng"][1])


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(str(marker))}, tmp_path / "evil.ckpt")
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(CheckpointError, match=re.escape("refused to unpickle this file with weights_only=True")) as info:
        fabric.load(tmp_path / "evil.ckpt")
    assert "weights_only=False" in str(info.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        fabric.load_raw(tmp_path / "evil.ckpt", nn.Linear(1, 1))
    assert not marker.exists()
    # the explicit opt-out really loads arbitrary pickles (and so runs the payload)
    fabric.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_missing_folder_and_truncated_files_are_reported(tmp_path):
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(CheckpointError, match=re.escape("found no checkpoint: the path does not exist")):
        fabric.load(tmp_path / "nope.ckpt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match=re.escape("got a folder, but this strategy saves single-file checkpoints")):
        fabric.load(tmp_path / "folder")
    with pytest.raises(CheckpointError, match=re.escape("cannot write a file there: that path is an existing folder")):
        fabric.save(tmp_path / "folder", {"a": 1})
    torch.save({"w": torch.ones(1000)}, tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape("It is not a complete torch checkpoint")):
        fabric.load(tmp_path / "cut.ckpt")


class Explodes:
    def __reduce__(self):
        raise RuntimeError("cannot pickle me")


def test_failed_save_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1}, path)
    with pytest.raises(RuntimeError, match="cannot pickle me"):
        atomic_save({"step": 2, "bad": Explodes()}, path)
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_killed_writer_never_leaves_a_partial_checkpoint(tmp_path):
    """A process killed with SIGKILL while writing leaves either nothing or a complete file at the path."""
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import torch, sys
        from fabric_lite.checkpoint.io import atomic_save
        big = torch.randn(8_000_000)  # ~32 MB per write
        step = 0
        while True:
            atomic_save({{"step": step, "w": big}}, {str(path)!r})
            print(step, flush=True)
            step += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"  # at least one complete write happened
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    loaded = torch.load(path, weights_only=True)
    assert loaded["w"].numel() == 8_000_000 and isinstance(loaded["step"], int)



def test_sharded_folder_loaded_by_a_single_file_strategy_points_to_consolidate(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "COMPLETE").write_text("done\n")
    with pytest.raises(CheckpointError, match=re.escape("got a sharded checkpoint folder, which this strategy cannot read. Fix: load it with the strategy that wrote it ('fsdp' or a DeepSpeed strategy), or convert it once: fabric-run consolidate")):
        Fabric(accelerator="cpu").load(folder)


def test_saved_file_gets_the_permissions_of_an_ordinary_file(tmp_path):
    import stat

    fabric = Fabric(accelerator="cpu")
    old = os.umask(0o022)
    try:
        fabric.save(tmp_path / "perm.ckpt", {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "perm.ckpt").stat().st_mode) == 0o644
