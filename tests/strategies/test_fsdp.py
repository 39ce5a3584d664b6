"""FSDP2 on real CPU processes (gloo): sharding, training, clipping, no_backward_sync, meta init, HSDP, checkpoints
across world sizes, consolidation and every error message; bf16-mixed on one GPU when there is one.

Three launches share one folder (world 2 trains and saves, world 1 loads and saves, world 2 loads again)
so that the whole file stays well under a minute and a half on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fabric_lite import Fabric
from fabric_lite.checkpoint.sharded import indices_to_names
from fabric_lite.cli import main as cli_main
from fabric_lite.errors import CheckpointError, ConfigurationError
from fabric_lite.strategies.fsdp import FSDPStrategy

SCRIPT = str(Path(__file__).parent / "_scripts" / "fsdp_checks.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


def run(cmd, timeout=120):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def read(folder, name):
    return json.loads((folder / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    run([sys.executable, SCRIPT, str(out), "--phase", "train", "--strategy", "fsdp", "--devices", "2"])
    run([sys.executable, SCRIPT, str(out), "--phase", "single", "--devices", "1"])
    run([sys.executable, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "2", SCRIPT, str(out), "--phase", "reload"])
    run([sys.executable, SCRIPT, str(out), "--phase", "reload4", "--strategy", "fsdp", "--devices", "4"], timeout=180)
    names = ("train0", "train1", "single0", "reload0", "reload1", "reload40", "reload41", "reload42", "reload43")
    return out, {name: read(out, name) for name in names}


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def flat(model):
    return [p.detach().flatten().tolist() for p in model.parameters()]


def reference():
    """The same 4 steps in one process: each step averages the two ranks' losses (rank r takes samples r, r+2, ...)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    for step in range(4):
        rank0 = list(range(16 * step, 16 * step + 16, 2))
        rank1 = [i + 1 for i in rank0]
        opt.zero_grad()
        mse = nn.functional.mse_loss
        ((mse(model(x[rank0]), y[rank0]) + mse(model(x[rank1]), y[rank1])) / 2).backward()
        opt.step()
    return flat(model)


def assert_close(got, want, atol=1e-5):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=atol), (a, b)


# ------------------------------------------------------------------------------------------ training
def test_parameters_are_dtensors_sharded_across_two_ranks(runs):
    _, r = runs
    r0, r1 = r["train0"], r["train1"]
    assert (r0["world"], r1["world"], r0["launcher"]) == (2, 2, "subprocess")
    assert r0["types"] == r1["types"] == ["DTensor"] * 4
    # Linear(4, 8): 8 rows split 4 + 4; Linear(8, 1): its single row lives on rank 0
    assert r0["local_rows"] == [4, 4, 1, 1] and r1["local_rows"] == [4, 4, 0, 0]
    assert r0["initial_matches_unsharded"] and r1["initial_matches_unsharded"]


def test_training_matches_one_process_and_the_optimizer_made_before_setup_works(runs):
    _, r = runs
    r0, r1 = r["train0"], r["train1"]
    assert r0["loss_after"] < r0["loss_before"]
    assert r0["trained"] == r1["trained"]
    assert_close(r0["trained"], reference())
    for res in (r0, r1):
        assert res["optimizer_holds_model_params"] and res["shard_changed"]
        assert res["hyperparameters"] == [0.1, 0.5]
        assert res["late_optimizer"] == {"changed": True, "betas": [0.8, 0.9]}  # setup_module, then setup_optimizers


def test_clip_gradients_returns_the_global_norm_on_every_rank(runs):
    _, r = runs
    c0, c1 = r["train0"]["clip"], r["train1"]["clip"]
    assert c0["type"] == c1["type"] == "Tensor"  # not a DTensor
    assert c0["norm"] == c1["norm"]
    assert c0["norm"] == pytest.approx(c0["gathered"], rel=1e-5) and c0["norm"] > 0.5
    assert c0["after"] == pytest.approx(0.5, rel=1e-4)


def test_no_backward_sync_accumulates_locally_then_syncs_once(runs):
    _, r = runs
    for res in (r["train0"], r["train1"]):
        assert res["unsynced_grad_is_none"]  # nothing was reduce-scattered inside the block
        # rank r's local grad is 2(r+1) per entry, twice: mean over ranks of (2+2, 4+4) = 6 (3 if one pass were lost)
        assert res["accumulated_grad"] == [6.0] * 8


def test_empty_init_builds_on_meta_and_materialises_only_the_shard(runs):
    _, r = runs
    r0, r1 = r["train0"], r["train1"]
    assert r0["meta_before"] and r1["meta_before"]
    assert r0["meta_after"] == [["cpu", [4, 4]], ["cpu", [4]], ["cpu", [1, 8]], ["cpu", [1]]]
    assert r1["meta_after"] == [["cpu", [4, 4]], ["cpu", [4]], ["cpu", [1, 8]], ["cpu", [1]]]
    for res in (r0, r1):
        init = res["empty_init_weight"]
        assert init["finite"] and 0 < init["max"] <= 0.5  # Linear's reset_parameters bound 1/sqrt(fan_in)
        assert init["distinct_rows"] == 8  # the two ranks' shards were not drawn from the same numbers


def test_activation_checkpointing_keeps_gradients_and_checkpoint_keys(runs):
    _, r = runs
    res = r["train0"]
    assert res["ac_wrapped"] == "CheckpointWrapper" and res["ac_same_grads"]
    assert res["ac_keys"] == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_hybrid_sharding_on_a_two_dimensional_mesh(runs):
    _, r = runs
    h0, h1 = r["reload0"]["hsdp"], r["reload1"]["hsdp"]
    assert h0["mesh"] == [2, 1] and h0["placements"] == ["R", "S(0)"]
    assert h0["params"] == h1["params"]  # replicas stay equal after a step on different data


# ------------------------------------------------------------------------------------------ checkpoints
def test_sharded_save_writes_one_complete_folder_and_loads_back(runs):
    out, r = runs
    assert r["train0"]["folder"] == [".metadata", "COMPLETE", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no staging folder left behind
    for res in (r["train0"], r["train1"]):
        for kind in ("loaded_sharded", "loaded_full"):
            loaded = res[kind]
            assert loaded["params"] == res["trained"] and loaded["momentum"] == res["momentum"]
            assert (loaded["step"], loaded["counter"], loaded["remainder"]) == (5, 7, [])


def test_checkpoints_move_between_world_sizes(runs):
    _, r = runs
    single = r["single0"]
    assert single["world"] == 1
    assert single["loaded_sharded"]["params"] == r["train0"]["trained"]  # written at 2, read at 1
    assert single["loaded_sharded"]["momentum"] == r["train0"]["momentum"]
    assert (single["loaded_sharded"]["step"], single["loaded_sharded"]["counter"]) == (5, 7)
    assert single["loaded_full"]["params"] == r["train0"]["trained"]
    for res in (r["reload0"], r["reload1"]):  # written at 1, read at 2
        assert res["loaded_w1"] == single["saved_w1"] and res["step"] == 6
    assert r["reload0"]["local_rows"] == [4, 4, 1, 1]
    for rank in range(4):  # written at 2, read at 4
        res = r[f"reload4{rank}"]
        assert res["world"] == 4 and res["step"] == 5
        assert res["params"] == r["train0"]["trained"] and res["momentum"] == r["train0"]["momentum"]


def test_full_checkpoint_is_one_plain_file_for_any_model(runs):
    out, r = runs
    trained = r["train0"]["trained"]
    checkpoint = torch.load(out / "full.ckpt", weights_only=True)
    assert sorted(checkpoint) == ["__fabric_lite__", "counter", "model", "optimizer", "step"]
    plain = make_model()
    plain.load_state_dict(checkpoint["model"])
    assert flat(plain) == trained
    # and through a plain one-process Fabric, optimizer state included
    fabric = Fabric(accelerator="cpu", devices=1)
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5))
    state = {"model": model, "optimizer": opt, "step": 0}
    remainder = fabric.load(out / "full.ckpt", state)
    assert flat(model) == trained and state["step"] == 5 and remainder == {"counter": {"count": 7}}
    momentum = [opt.state[p]["momentum_buffer"].flatten().tolist() for p in model.parameters()]
    assert momentum == r["train0"]["momentum"]


def test_consolidate_command_makes_one_loadable_file(runs, tmp_path, capsys):
    out, r = runs
    target = tmp_path / "nested" / "consolidated.ckpt"
    assert cli_main(["consolidate", str(out / "ckpt_w2"), "--output", str(target)]) == 0
    assert "wrote" in capsys.readouterr().out
    checkpoint = torch.load(target, weights_only=True)
    assert checkpoint["step"] == 5 and checkpoint["counter"] == {"count": 7}
    assert "sharded" not in checkpoint["__fabric_lite__"]
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    assert flat(model) == r["train0"]["trained"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    opt.load_state_dict(checkpoint["optimizer"])  # torch's index-keyed format
    assert opt.state[model[0].weight]["momentum_buffer"].flatten().tolist() == r["train0"]["momentum"][0]
    assert [p.name for p in tmp_path.joinpath("nested").iterdir()] == ["consolidated.ckpt"]


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(state_dict_type="flat"),
         "FSDPStrategy(state_dict_type='flat') is not a known state dict type. Choose one of: sharded, full. Fix:"),
        (dict(auto_wrap_policy=42),
         "FSDPStrategy(auto_wrap_policy=42) must be a set of nn.Module classes or a callable(module) -> bool. Fix:"),
        (dict(auto_wrap_policy={"Linear"}), "FSDPStrategy(auto_wrap_policy={'Linear'}) must be a set of nn.Module classes"),
        (dict(activation_checkpointing_policy="Linear"),
         "FSDPStrategy(activation_checkpointing_policy='Linear') must be a set of nn.Module classes"),
        (dict(device_mesh="2x2"), "FSDPStrategy(device_mesh='2x2') is not a mesh. Choose one of: None"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigurationError) as error:
        FSDPStrategy(**kwargs)
    assert str(error.value).startswith(message)


def test_cpu_offload_on_cpu_says_it_needs_cuda():
    fabric = Fabric(accelerator="cpu", devices=1, strategy=FSDPStrategy(cpu_offload=True))
    with pytest.raises(ConfigurationError, match=r"FSDPStrategy\(cpu_offload=True\) needs CUDA: .* Fix: drop cpu_offload=True"):
        fabric.launch()


@pytest.mark.parametrize("mesh, asked", [((2, 2), "2 replicas x 2 shards = 4"), (3, "1 replicas x 3 shards = 3")])
def test_mesh_that_does_not_match_the_world_size(mesh, asked):
    fabric = Fabric(accelerator="cpu", devices=1, strategy=FSDPStrategy(device_mesh=mesh))
    with pytest.raises(ConfigurationError, match=rf"asks for {asked} processes, but this job has 1\. Fix:"):
        fabric.launch()


def test_no_backward_sync_needs_the_set_up_model():
    with pytest.raises(ConfigurationError, match=r"under FSDP needs the model returned by fabric.setup\(...\), got a Linear"):
        FSDPStrategy().no_backward_sync(nn.Linear(1, 1), True)


def test_loading_something_that_is_not_a_complete_checkpoint(tmp_path):
    strategy = FSDPStrategy()
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / ".metadata").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"got an incomplete sharded checkpoint: the folder has no 'COMPLETE' marker"):
        strategy.load_checkpoint(incomplete, {})
    with pytest.raises(CheckpointError, match=r"got a folder that is not a checkpoint: .* Fix: pass a folder written by"):
        strategy.load_checkpoint(tmp_path, {})
    with pytest.raises(CheckpointError, match=r"found no checkpoint: the path does not exist"):
        strategy.load_checkpoint(tmp_path / "missing.ckpt", {})


def test_loading_a_sharded_folder_without_state(runs):
    _, r = runs
    assert "got a sharded checkpoint folder but no state to load into" in r["train0"]["no_state_error"]
    assert "Fix: fabric.load(path, {'model': model, 'optimizer': optimizer}), or make one file first: " \
           "fabric-run consolidate" in r["train0"]["no_state_error"]


def test_consolidate_errors(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "__0_0.distcp").write_bytes(b"")
    assert cli_main(["consolidate", str(tmp_path / "half"), "--output", str(tmp_path / "x.ckpt")]) == 2
    assert "got an incomplete sharded checkpoint" in capsys.readouterr().err
    (tmp_path / "one.ckpt").write_bytes(b"")
    assert cli_main(["consolidate", str(tmp_path / "one.ckpt"), "--output", str(tmp_path / "x.ckpt")]) == 2
    assert "needs a sharded checkpoint folder, but it is a file" in capsys.readouterr().err
    assert cli_main(["consolidate", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.ckpt")]) == 2
    assert "but it does not exist. Fix: check the path." in capsys.readouterr().err


def test_save_errors(tmp_path):
    strategy = FSDPStrategy()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"writes a sharded checkpoint, which is a folder, but that path is an existing file"):
        strategy.save_checkpoint(tmp_path / "file", {"step": 1})
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigurationError, match=r"got a SGD whose parameters belong to no model set up by this FSDP strategy"):
        strategy.save_checkpoint(tmp_path / "ckpt", {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1)})
    with pytest.raises(CheckpointError, match=r"checkpoint's optimizer has 1 parameters but this optimizer has 2"):
        indices_to_names({"param_groups": [{"params": [0]}], "state": {}}, ["weight", "bias"])


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("cpu_offload", [False, True], ids=["on-gpu", "cpu-offload"])
def test_bf16_mixed_on_one_gpu(tmp_path, cpu_offload):
    cmd = [sys.executable, SCRIPT, str(tmp_path), "--phase", "cuda", "--accelerator", "cuda", "--devices", "1",
           "--precision", "bf16-mixed", *(["--cpu-offload"] if cpu_offload else [])]
    run(cmd, timeout=240)
    r = read(tmp_path, "cuda0")
    assert r["device"] == "cuda:0"
    assert r["compute"] == ["torch.bfloat16", "torch.bfloat16"]  # FSDP casts parameters for the forward
    assert r["param_dtype"] == r["grad_dtype"] == r["output_dtype"] == "torch.float32"  # shards and reduction stay fp32
    assert r["shard_device"] == ("cpu" if cpu_offload else "cuda")
    assert r["losses"][-1] < r["losses"][0]
    assert r["round_trip"]
