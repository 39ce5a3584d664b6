"""DeepSpeed ZeRO on real CPU processes (gloo): stages 2 and 3 in fp32 and bf16-mixed train (fp32 on the exact
trajectory of one process, clipping and accumulation included), agree across ranks, save/load round trips,
consolidate to one fp32 file; config mapping and every error message.

Four launches of two ranks (about 10 s each once DeepSpeed's communication op is compiled; its first
build takes about a minute and is cached under TORCH_EXTENSIONS_DIR). Everything else runs in this
process without a process group, or in a short subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("deepspeed", reason="DeepSpeedStrategy needs deepspeed: pip install 'torch-fabric-lite[deepspeed]'")

from fabric_lite import Fabric
from fabric_lite.checkpoint.sharded import MARKER
from fabric_lite.errors import CheckpointError, ConfigurationError, UsageError
from fabric_lite.precision.amp import MixedPrecision
from fabric_lite.registry import STRATEGIES
from fabric_lite.strategies.deepspeed import (
    TAG,
    DeepSpeedPrecision,
    DeepSpeedStrategy,
    check_same_device,
    consolidate_deepspeed_checkpoint,
    is_deepspeed_checkpoint,
)

SCRIPT = str(Path(__file__).parent / "_scripts" / "deepspeed_checks.py")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    # DeepSpeed compiles a small communication op on first use: build it once per machine, not per run.
    "TORCH_EXTENSIONS_DIR": os.environ.get(
        "TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/fabric_lite/torch_extensions")
    ),
}
CONFIGS = {
    "stage1-fp32": ["--stage", "1", "--precision", "32-true"],
    "stage1-bf16": ["--stage", "1", "--precision", "bf16-mixed"],
    "stage2-fp32": ["--stage", "2", "--precision", "32-true", "--extras"],
    "stage2-bf16": ["--stage", "2", "--precision", "bf16-mixed"],
    "stage3-fp32": ["--stage", "3", "--precision", "32-true", "--accumulate", "2"],
    "stage3-bf16": ["--stage", "3", "--precision", "bf16-mixed"],
}


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def reference_losses(accumulate):
    """The script's training in one process: 2 ranks x 4 samples per micro-batch, mean loss, clip 1.0, Adam."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x[:, :1] * 0.5 - x[:, 1:2] * 0.25 + 0.1
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for step in range(16):
        batch = 4 * (step % 8)  # each rank's loader holds 8 batches of 4 (DistributedSampler: rank r takes r::2)
        rank_losses = [nn.functional.mse_loss(model(x[r::2][batch:batch + 4]), y[r::2][batch:batch + 4]) for r in (0, 1)]
        loss = sum(rank_losses) / 2
        losses.append(loss.item())
        (loss / accumulate).backward()
        if (step + 1) % accumulate == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
    return losses


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """Launch a configuration once (2 ranks through the subprocess launcher); later asks reuse its results."""
    done = {}

    def launch(name):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            # Generous: the first run on a machine compiles DeepSpeed's op (about a minute on two cores).
            result = subprocess.run([sys.executable, SCRIPT, str(out), *CONFIGS[name]], check=False, capture_output=True,
                                    text=True, timeout=240, env=ENV)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
            done[name] = (name, out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)])
        return done[name]

    return launch


@pytest.fixture(params=list(CONFIGS))
def launched(request, launches):
    return launches(request.param)


def test_trains_agrees_across_ranks_and_round_trips(launched):
    name, out, (r0, r1) = launched
    stage = int(name[len("stage")])
    bf16 = name.endswith("bf16")
    assert (r0["world"], r1["world"], r0["launcher"]) == (2, 2, "subprocess")
    assert r0["engine"] == r1["engine"] == {
        "type": "DeepSpeedEngine", "micro_batch": 4, "clipping": 1.0, "accumulation": 2 if name == "stage3-fp32" else 1,
        "zero_stage": stage, "dtype": "torch.bfloat16" if bf16 else "torch.float32",
    }
    assert r0["global_steps"] == (8 if name == "stage3-fp32" else 16)  # accumulation steps on the boundary only
    losses = r0["losses"]
    assert losses == r1["losses"]  # all-reduced
    assert sum(losses[-4:]) / 4 < 0.25 * sum(losses[:4]) / 4, losses
    if not bf16:  # fp32: the same trajectory as one process on the global batch (clipping and accumulation included)
        expected = reference_losses(2 if name == "stage3-fp32" else 1)
        assert torch.allclose(torch.tensor(losses), torch.tensor(expected), rtol=1e-4, atol=1e-6), (losses, expected)
    # the same full parameters on both ranks (gathered from the shards at stage 3)
    assert r0["saved"] == r1["saved"] and r0["loaded"] == r1["loaded"]
    # load restores the saved parameters exactly, and the user's state; the engine trains on afterwards
    for r in (r0, r1):
        assert r["changed"] is True
        assert r["loaded"] == r["saved"]
        assert r["loaded_step"] == 16 and r["remainder"] == {"extra": {"note": "kept"}}
        assert all(math.isfinite(loss) for loss in r["losses_after_load"])
    assert r0["losses_after_load"][0] < losses[0]
    for key in ("clip_norm", "clip_value", "two_optimizers", "setup_optimizers"):
        assert r0[key] == r1[key]
    assert r0["clip_norm"].startswith(
        "ConfigurationError: fabric.clip_gradients(model, optimizer, max_norm=1.0) cannot work under DeepSpeedStrategy: "
        "the engine reduces, unscales and clips gradients inside its own step"
    )
    assert 'Fix: DeepSpeedStrategy(gradient_clipping=1.0) or set "gradient_clipping": 1.0 in the DeepSpeed config' in r0["clip_norm"]
    assert "fabric.clip_gradients(model, optimizer, clip_val=0.5) cannot work under DeepSpeedStrategy" in r0["clip_value"]
    assert r0["two_optimizers"] == (
        "ConfigurationError: fabric.setup(model, optimizer1, optimizer2) under DeepSpeedStrategy got 2 optimizers, but a "
        "DeepSpeed engine drives exactly one. Fix: put every parameter group into one optimizer, e.g. "
        "torch.optim.AdamW([{'params': a}, {'params': b, 'lr': 1e-4}]), and call fabric.setup(model, optimizer)."
    )
    assert r0["setup_optimizers"].startswith(
        "ConfigurationError: fabric.setup_optimizers(optimizer) cannot work under DeepSpeedStrategy"
    )
    # the folder is complete and in place, no temporary sibling is left
    assert (out / "ckpt" / MARKER).is_file() and (out / "ckpt" / TAG).is_dir()
    assert is_deepspeed_checkpoint(out / "ckpt") and not is_deepspeed_checkpoint(out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_consolidated_file_loads_into_a_plain_module(launched):
    name, out, (r0, _) = launched
    checkpoint = torch.load(out / "consolidated.pt", weights_only=True)
    assert checkpoint["step"] == 16 and checkpoint["extra"] == {"note": "kept"}
    plain = make_model()
    plain.load_state_dict(checkpoint["model"])
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    for key, param in plain.named_parameters():
        saved = torch.tensor(r0["saved"][key])
        if name.endswith("bf16"):  # the file holds the fp32 master weights; the engine computes with their bf16 copy
            assert torch.equal(param.detach().flatten().to(torch.bfloat16).float(), saved)
        else:
            assert torch.equal(param.detach().flatten(), saved)
    # and through fabric.load into a plain model, under the default strategy
    fabric = Fabric(accelerator="cpu", devices=1)
    state = {"model": make_model(), "step": 0}
    assert fabric.load(out / "consolidated.pt", state) == {"extra": {"note": "kept"}}
    assert state["step"] == 16
    assert all(torch.equal(a, b) for a, b in zip(state["model"].parameters(), plain.parameters()))


def test_fabric_run_consolidate_recognises_a_deepspeed_folder(launches, tmp_path, capsys):
    from fabric_lite.cli import main

    _, out, _ = launches("stage3-bf16")
    assert main(["consolidate", str(out / "ckpt"), "--output", str(tmp_path / "merged.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    merged = torch.load(tmp_path / "merged.pt", weights_only=True)
    reference = torch.load(out / "consolidated.pt", weights_only=True)
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged["model"][k], reference["model"][k]) for k in reference["model"])


def test_one_off_checks(launches, tmp_path):
    _, out, (r0, r1) = launches("stage2-fp32")
    assert r0["unsafe_refused"] == r1["unsafe_refused"]
    assert r0["unsafe_refused"].startswith("CheckpointError: fabric.load(")
    assert "refused to unpickle checkpoint/mp_rank_00_model_states.pt (Weights only load failed" in r0["unsafe_refused"]
    assert "Fix: if you made this checkpoint yourself and trust it, call fabric.load(path, state, weights_only=False)." in r0["unsafe_refused"]
    assert r0["unsafe_trusted"] == r1["unsafe_trusted"] == 3
    # inference: an engine without optimizer, the same output as the plain module; no backward through it
    expected = make_model()(torch.ones(3, 8)).tolist()
    assert r0["inference"] == r1["inference"] == expected
    assert r0["inference_backward"] == (
        "UsageError: fabric.backward(loss) was called on a model set up without an optimizer (fabric.setup_module), "
        "which DeepSpeed builds for inference only. Fix: fabric.setup(model, optimizer)."
    )
    assert r0["backward_picks_trained"] is None  # without model=, the one model with an optimizer
    assert r0["ambiguous_backward"] == (
        "ConfigurationError: fabric.backward(loss) cannot tell which of the 2 DeepSpeed models it is for. "
        "Fix: fabric.backward(loss, model=model) with the model returned by fabric.setup(...)."
    )
    assert r0["two_engines_saved"].startswith("ConfigurationError: fabric.save(")
    assert (
        "the state holds 2 DeepSpeed models ('a', 'b'), and a checkpoint folder stores one engine. "
        "Fix: pass the model returned by fabric.setup(model, optimizer)"
    ) in r0["two_engines_saved"]
    assert r0["set_up_twice"] == (
        "UsageError: fabric.setup() got a Sequential that is already inside a DeepSpeed engine. Fix: set up each model once."
    )
    # consolidation refuses the same file, and writes nothing
    with pytest.raises(CheckpointError, match=r"refused to unpickle checkpoint/mp_rank_00_model_states.pt \(Weights only"):
        consolidate_deepspeed_checkpoint(out / "unsafe", tmp_path / "unsafe.pt")
    assert not (tmp_path / "unsafe.pt").exists()


# ------------------------------------------------------------------------------------------ in this process
def test_missing_package_and_lazy_import():
    code = (
        "import sys\n"
        "import fabric_lite, fabric_lite.strategies.deepspeed\n"
        "assert 'deepspeed' not in sys.modules, 'imported at import time'\n"
        "sys.modules['deepspeed'] = None\n"
        "from fabric_lite.strategies.deepspeed import DeepSpeedStrategy, consolidate_deepspeed_checkpoint\n"
        "for call in (DeepSpeedStrategy, lambda: consolidate_deepspeed_checkpoint('a', 'b')):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as error:\n"
        "        print(type(error).__name__, error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"MissingPackageError {what} needs the package 'deepspeed', which is not installed. "
        f"Fix: pip install 'torch-fabric-lite[deepspeed]' (in a source checkout: pip install -e '.[deepspeed]')"
        for what in ("DeepSpeedStrategy", "consolidate_deepspeed_checkpoint")
    ]


def test_fabric_setup_does_not_import_deepspeed_before_launch():
    code = (
        "import sys\n"
        "from fabric_lite import Fabric\n"
        "from fabric_lite.strategies.deepspeed import DeepSpeedStrategy\n"
        "f = Fabric(accelerator='cpu', devices=2, strategy=DeepSpeedStrategy(stage=3), precision='bf16-mixed')\n"
        "print(type(f.strategy.precision).__name__, f.plan.launcher)\n"
        "assert 'deepspeed' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DeepSpeedPrecision", "subprocess"]


@pytest.mark.parametrize("precision", ["16-mixed", "16-true"])
def test_fp16_on_cpu_is_refused(precision):
    with pytest.raises(ConfigurationError) as error:
        Fabric(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(), precision=precision)
    assert str(error.value) == (
        f"Fabric(strategy=DeepSpeedStrategy(...), precision={precision!r}) cannot run on cpu: DeepSpeed's fp16 mode "
        f"(float16 weights with loss scaling) works on CUDA devices only. Fix: precision='bf16-mixed' (or '32-true') "
        f"on cpu, or accelerator='cuda'."
    )


def test_fp16_config_on_cpu_is_refused():
    with pytest.raises(ConfigurationError, match=r"config=\{'fp16': \{'enabled': True\}\}\) cannot run on cpu"):
        Fabric(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy({"fp16": {"enabled": True}}))


def test_config_precision_must_agree_with_fabric_precision():
    with pytest.raises(ConfigurationError) as error:
        Fabric(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy({"bf16": {"enabled": True}}))
    assert str(error.value).startswith(
        "DeepSpeedStrategy(config={'bf16': {'enabled': True}}) conflicts with Fabric(precision='32-true'): the engine "
        "would hold bf16 weights while Fabric casts inputs for 32-true. Fix: precision='bf16-mixed'"
    )


def test_double_precision_is_refused():
    with pytest.raises(ConfigurationError, match=r"precision='64-true'\) is not supported: DeepSpeed trains in fp32, bf16 or fp16 only"):
        Fabric(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(), precision="64-true")


def test_precision_becomes_deepspeeds_own():
    fabric = Fabric(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(), precision="bf16")
    precision = fabric.strategy.precision
    assert isinstance(precision, DeepSpeedPrecision) and precision.name == "bf16-mixed"
    assert fabric.strategy.plain_backward() is False and fabric.strategy.plain_optimizer_step() is False
    assert precision.convert_input({"x": torch.ones(2), "i": torch.ones(2, dtype=torch.long)})["x"].dtype == torch.bfloat16
    assert precision.convert_module(nn.Linear(1, 1)).weight.dtype == torch.float32  # the engine casts; master stays fp32
    assert DeepSpeedPrecision("bf16-true").convert_module(nn.Linear(1, 1)).weight.dtype == torch.bfloat16
    # a precision given to the strategy instance is converted too, and the plan takes it
    strategy = DeepSpeedStrategy(precision=MixedPrecision("bf16-mixed", "cpu"))
    assert Fabric(accelerator="cpu", devices=2, strategy=strategy).plan.precision == "bf16-mixed"


def test_config_from_arguments():
    strategy = DeepSpeedStrategy(stage=3, offload_optimizer=True, offload_parameters=True, offload_params_device="nvme",
                                 nvme_path="/nvme", gradient_clipping=0.5, gradient_accumulation_steps=4)
    config = strategy.engine_config()
    zero = config.pop("zero_optimization")
    assert config == {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 4, "gradient_clipping": 0.5,
                      "zero_allow_untested_optimizer": True}
    assert (zero["stage"], zero["offload_optimizer"], zero["offload_param"]) == (
        3, {"device": "cpu", "pin_memory": False}, {"device": "nvme", "pin_memory": False, "nvme_path": "/nvme"})
    assert zero["overlap_comm"] is True and zero["reduce_bucket_size"] == 200_000_000
    assert DeepSpeedStrategy(stage=0).engine_config()["zero_optimization"] == {"stage": 0}
    # inference: ZeRO 1-2 need an optimizer, so their section is dropped; stage 3 keeps partitioning
    assert "zero_optimization" not in DeepSpeedStrategy(stage=2).engine_config(training=False)
    assert DeepSpeedStrategy(stage=3).engine_config(training=False)["zero_optimization"]["stage"] == 3


def test_user_config_is_completed_not_replaced(tmp_path):
    user = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 8, "gradient_clipping": 2.0}
    strategy = DeepSpeedStrategy(user, stage=3, precision=MixedPrecision("bf16-mixed", "cpu"))
    config = strategy.engine_config()
    assert config["zero_optimization"] == {"stage": 1} and strategy.zero_stage == 1
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["gradient_clipping"] == 2.0
    assert config["bf16"] == {"enabled": True} and config["gradient_accumulation_steps"] == 1
    assert user == {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 8, "gradient_clipping": 2.0}
    # a global batch size: DeepSpeed derives the micro-batch from it and the world size
    assert "train_micro_batch_size_per_gpu" not in DeepSpeedStrategy({"train_batch_size": 32}).engine_config()
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    assert DeepSpeedStrategy(str(path)).engine_config()["zero_optimization"] == {"stage": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage": 4}, "DeepSpeedStrategy(stage=4) is not a known ZeRO stage. Choose one of: 0, 1, 2, 3."),
        ({"offload_optimizer_device": "disk"},
         "DeepSpeedStrategy(offload_optimizer_device='disk') is not a known offload device. Choose one of: cpu, nvme."),
        ({"stage": 2, "offload_parameters": True},
         ("DeepSpeedStrategy(stage=2, offload_parameters=True): only ZeRO stage 3 partitions parameters, so only "
          "stage 3 can offload them. Fix: stage=3, or offload_optimizer=True alone.")),
        ({"gradient_accumulation_steps": 0},
         "DeepSpeedStrategy(gradient_accumulation_steps=0) must be a positive int. Fix: gradient_accumulation_steps=4."),
        ({"gradient_clipping": -1.0},
         "DeepSpeedStrategy(gradient_clipping=-1.0) must be a positive norm. Fix: gradient_clipping=1.0, or leave it out"),
        ({"config": {"gradient_clipping": 2.0}, "gradient_clipping": 1.0},
         ("DeepSpeedStrategy(gradient_clipping=1.0, config={'gradient_clipping': 2.0, ...}) sets gradient_clipping "
          "twice with different values. Fix: keep one of them.")),
        ({"config": "/nonexistent/ds.json"},
         "DeepSpeedStrategy(config='/nonexistent/ds.json') found no file there. Fix: check the path"),
        ({"config": 3}, "DeepSpeedStrategy(config=int) must be a dict or the path of a JSON file."),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ConfigurationError) as error:
        DeepSpeedStrategy(**kwargs)
    assert str(error.value).startswith(message), str(error.value)


def test_bad_json_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text("{stage: 3")
    with pytest.raises(ConfigurationError, match=r"ds.json'\) is not valid JSON \(.*\)\. Fix: correct the file\."):
        DeepSpeedStrategy(str(path))
    path.write_text("[1]")
    with pytest.raises(ConfigurationError, match=r"ds.json'\) must hold a JSON object, not list"):
        DeepSpeedStrategy(path)


def test_no_backward_sync_warns():
    warning = r"no_backward_sync\(model\) has no effect under DeepSpeedStrategy: ZeRO reduces"
    with pytest.warns(UserWarning, match=warning), DeepSpeedStrategy().no_backward_sync(nn.Linear(1, 1), True):
        pass


def test_checkpoint_errors(tmp_path):
    strategy = DeepSpeedStrategy()
    with pytest.raises(ConfigurationError, match=r"filter=\.\.\.\) is not supported under DeepSpeedStrategy"):
        strategy.save_checkpoint(tmp_path / "c", {}, filter={"model": lambda k, v: True})
    (tmp_path / "file.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"got a file, but DeepSpeedStrategy loads the checkpoint folders it saves"):
        strategy.load_checkpoint(tmp_path / "file.ckpt", {})
    with pytest.raises(CheckpointError, match=r"found no checkpoint folder at that path"):
        strategy.load_checkpoint(tmp_path / "missing", {})
    incomplete = tmp_path / "incomplete"
    (incomplete / TAG).mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"got an incomplete DeepSpeed checkpoint: the folder has no 'COMPLETE' marker"):
        strategy.load_checkpoint(incomplete, {})
    with pytest.raises(CheckpointError, match=r"consolidate_deepspeed_checkpoint\(.*\) got an incomplete DeepSpeed checkpoint"):
        consolidate_deepspeed_checkpoint(incomplete, tmp_path / "out.pt")
    (tmp_path / "other").mkdir()
    with pytest.raises(CheckpointError, match=r"got a folder that is not a DeepSpeed checkpoint of fabric_lite"):
        strategy.load_checkpoint(tmp_path / "other", {})
    (incomplete / MARKER).write_text("")
    with pytest.raises(CheckpointError, match=r"got a damaged DeepSpeed checkpoint: .* holds no model states file"):
        strategy.load_checkpoint(incomplete, {})
    (incomplete / TAG / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(ConfigurationError, match=r"got a DeepSpeed checkpoint folder but no state to load into"):
        strategy.load_checkpoint(incomplete, None)
    with pytest.raises(ConfigurationError, match=r"got a DeepSpeed checkpoint folder but a Linear to load into"):
        strategy.load_checkpoint(incomplete, nn.Linear(1, 1))
    with pytest.raises(ConfigurationError, match=r"the state holds no model set up by DeepSpeedStrategy"):
        strategy.save_checkpoint(tmp_path / "c", {"step": 1})
    with pytest.raises(CheckpointError, match=r"writes a DeepSpeed checkpoint, which is a folder, but that path is an existing file"):
        strategy.save_checkpoint(tmp_path / "file.ckpt", {"step": 1})


def test_steps_need_a_set_up_model():
    strategy = DeepSpeedStrategy()
    with pytest.raises(UsageError, match=r"fabric.backward\(loss\) was called before fabric.setup\(model, optimizer\)"):
        strategy.backward(torch.ones(()), None)
    with pytest.raises(ConfigurationError, match=r"fabric.backward\(loss\) got a Linear that no DeepSpeed engine holds"):
        strategy.backward(torch.ones(()), nn.Linear(1, 1))
    with pytest.raises(ConfigurationError, match=r"optimizer.step\(\) got a SGD that no DeepSpeed engine holds"):
        strategy.optimizer_step(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1))
    with pytest.raises(ConfigurationError, match=r"optimizer.step\(closure\) cannot work under DeepSpeedStrategy"):
        strategy.optimizer_step(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), closure=lambda: 0.0)


def test_deepspeed_must_use_fabrics_device():
    check_same_device("cpu", "cpu")
    with pytest.raises(ConfigurationError) as error:
        check_same_device("cpu", "cuda")
    assert str(error.value) == (
        "Fabric runs this process on cpu, but DeepSpeed detected the accelerator 'cuda' and would place the engine "
        "there. Fix: set DS_ACCELERATOR=cpu before starting, or choose Fabric(accelerator='cuda')."
    )


def test_precision_plugin_errors():
    with pytest.raises(ConfigurationError, match=r"DeepSpeedPrecision\('64-true'\) is not a known DeepSpeed precision"):
        DeepSpeedPrecision("64-true")


# The names Lightning registers; active once fabric_lite/registry.py lists them.
NAMED = {
    "deepspeed": (2, False, False, "cpu"),
    "deepspeed_stage_1": (1, False, False, "cpu"),
    "deepspeed_stage_2": (2, False, False, "cpu"),
    "deepspeed_stage_2_offload": (2, True, False, "cpu"),
    "deepspeed_stage_3": (3, False, False, "cpu"),
    "deepspeed_stage_3_offload": (3, True, True, "cpu"),
    "deepspeed_stage_3_offload_nvme": (3, True, True, "nvme"),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_variants(name):
    if name not in STRATEGIES:
        pytest.skip(f"strategy {name!r} is not registered in fabric_lite/registry.py yet")
    fabric = Fabric(accelerator="cpu", devices=2, strategy=name)
    strategy = fabric.strategy
    stage, offload_optimizer, offload_parameters, device = NAMED[name]
    assert isinstance(strategy, DeepSpeedStrategy) and fabric.plan.launcher == "subprocess"
    assert (strategy.stage, strategy.offload_optimizer, strategy.offload_parameters) == (stage, offload_optimizer, offload_parameters)
    zero = strategy.engine_config()["zero_optimization"]
    if offload_optimizer:
        assert zero["offload_optimizer"]["device"] == device
    if offload_parameters:
        assert zero["offload_param"]["device"] == device


# ------------------------------------------------------------------ another world size (universal checkpoint)
RESHAPE_SCRIPT = str(Path(__file__).parent / "_scripts" / "deepspeed_reshape.py")
RESHAPE_PHASES = {"save2": 2, "load1": 1, "load2": 2}  # phase -> ranks; each loads what the one before saved


@pytest.fixture(scope="module")
def reshaped(tmp_path_factory):
    """ZeRO-2 and ZeRO-3, fp32 and bf16: saved on 2 ranks, loaded on 1 (which saves), loaded on 2. Three launches."""
    out = tmp_path_factory.mktemp("reshape")
    results = {}
    for phase, ranks in RESHAPE_PHASES.items():
        result = subprocess.run([sys.executable, RESHAPE_SCRIPT, str(out), phase], check=False, capture_output=True,
                                text=True, timeout=240, env=ENV)
        assert result.returncode == 0, f"{phase}:\n" + result.stdout[-4000:] + result.stderr[-8000:]
        results[phase] = [json.loads((out / f"{phase}-rank{r}.json").read_text()) for r in range(ranks)]
    return out, results


def _max_difference(a, b):
    return max(abs(x - y) for name in a for x, y in zip(a[name], b[name], strict=True))


@pytest.mark.parametrize("stage", ["stage2", "stage3", "stage2-bf16", "stage3-bf16"])
def test_zero_checkpoint_loads_at_another_world_size_bit_for_bit(reshaped, stage):
    _, results = reshaped
    saved_on_2 = results["save2"][0][stage]["saved"]
    on_1 = results["load1"][0][stage]
    assert [r[stage]["world"] for r in results["save2"] + results["load1"] + results["load2"]] == [2, 2, 1, 2, 2]
    # 2 -> 1: weights (fp32 masters and the compute copy), Adam moments and step, engine step, lr, buffers and
    # frozen parameters exactly as saved
    assert on_1["loaded"].keys() == saved_on_2.keys()
    for key in saved_on_2:
        assert on_1["loaded"][key] == saved_on_2[key], key
    assert on_1["loaded_step"] == {"stage2": 10, "stage3": 20, "stage2-bf16": 30, "stage3-bf16": 40}[stage]
    assert on_1["remainder"] == {"extra": {"world": 2}}
    # 1 -> 2: every rank holds the whole of what the single rank saved
    for rank_result in results["load2"]:
        assert rank_result[stage]["loaded"] == on_1["saved"]
        assert rank_result[stage]["remainder"] == {"extra": {"world": 1}}
    # training continues: the next step equals the one the saving run took (same global batch, so up to the
    # rounding of a 2-rank mean, and of bf16 compute); a fresh optimizer would move the weights by a whole step
    step_size = _max_difference(results["save2"][0][stage]["continued_after_save"], saved_on_2["fp32"])
    assert step_size > 1e-2
    tolerance = 1e-3 if stage.endswith("bf16") else 1e-6
    assert _max_difference(on_1["continued"], results["save2"][0][stage]["continued_after_save"]) < tolerance
    for rank_result in results["load2"]:
        assert _max_difference(rank_result[stage]["continued"], on_1["continued_after_save"]) < tolerance


def test_conversion_is_made_once_inside_the_checkpoint_folder(reshaped):
    out, results = reshaped
    for stage in ("stage2", "stage3", "stage2-bf16", "stage3-bf16"):
        assert results["load1"][0][stage]["converted_once"] is True
        assert results["load1"][0][stage]["siblings"] == [
            "COMPLETE", "checkpoint", "latest", "universal", "zero_to_fp32.py", "zero_to_torch.py"
        ]
        for source in (f"save2-{stage}", f"load1-{stage}"):
            assert (out / source / "universal" / "COMPLETE").is_file()
            assert not (out / source / "universal" / "checkpoint" / "junk.pt").exists()  # left by a killed conversion
            assert sorted(p.name for p in (out / source).iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_optimizer_state_that_cannot_be_resharded_is_refused(reshaped):
    out, results = reshaped
    def fix(saved=2):
        return (
            f"Fix: load it at world size {saved}; or leave the optimizer out of the state to load the weights alone "
            f"(the optimizer keeps its own state): fabric.load(path, {{'model': model, ...}})."
        )

    sgd = results["load1"][0]["stage2"]
    assert sgd["refused"] == (
        f"CheckpointError: fabric.load({str(out / 'sgd')!r}) cannot load the optimizer state of a ZeRO checkpoint saved "
        f"at world size 2 at world size 1: its optimizer state holds 'momentum_buffer', and DeepSpeed's universal checkpoint reshards "
        f"only Adam-style state ('exp_avg', 'exp_avg_sq'). {fix()}"
    )
    nostep = results["load1"][0]["stage3"]
    assert nostep["refused"] == (
        f"CheckpointError: fabric.load({str(out / 'nostep')!r}) cannot load the optimizer state of a ZeRO checkpoint "
        f"saved at world size 2 at world size 1: it holds no optimizer state yet (it was saved before the first optimizer step), which "
        f"DeepSpeed's universal checkpoint conversion needs. {fix()}"
    )
    on_two_ranks = [r["stage2"]["refused"] for r in results["load2"]]  # both ranks raise rank 0's error
    assert on_two_ranks[0] == on_two_ranks[1] == (
        f"CheckpointError: fabric.load({str(out / 'sgd1')!r}) cannot load the optimizer state of a ZeRO checkpoint saved "
        f"at world size 1 at world size 2: its optimizer state holds 'momentum_buffer', and DeepSpeed's universal checkpoint reshards "
        f"only Adam-style state ('exp_avg', 'exp_avg_sq'). " + fix(saved=1)
    )
    for refused in (sgd, nostep):  # refused before anything was loaded or written
        assert refused["untouched_after_refusal"] is True
        assert refused["refused_left_nothing"] == [
            "COMPLETE", "checkpoint", "latest", "zero_to_fp32.py", "zero_to_torch.py"
        ]


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_model_without_optimizer_loads_weights_at_any_world_size(reshaped, stage):
    # fabric.setup_module: before, DeepSpeed's load failed at stage 3 whatever the world size
    # ('DeepSpeedZeRoOffload' object has no attribute '_restore_from_bit16_weights')
    _, results = reshaped
    for saved, loading in ((results["save2"][0][stage]["saved"], results["load1"]),  # 2 -> 1
                           (results["load1"][0][stage]["saved"], results["load2"])):  # 1 -> 2
        for rank_result in loading:
            inference = rank_result[stage]["inference"]
            assert rank_result[stage]["inference_remainder"] == {"step": rank_result[stage]["loaded_step"]}
            assert {n: inference[n] for n in saved["fp32"]} == saved["fp32"]
            assert {n: inference[n] for n in saved["frozen"]} == saved["frozen"]
            assert {n: inference[n] for n in saved["buffers"]} == saved["buffers"]


def test_weights_alone_load_at_another_world_size_from_any_optimizer(reshaped):
    # No optimizer in the state: the whole weights (and the engine's fp32 masters) come from the folder, whatever
    # optimizer wrote it; the engine's own Adam moments stay. Before: DeepSpeed failed at stage 3 (1 -> 2).
    _, results = reshaped
    saved_sgd_on_2, saved_sgd_on_1 = results["save2"][0]["stage2"], results["load1"][0]["stage2"]
    cases = [(saved_sgd_on_2["sgd_weights"], saved_sgd_on_2["sgd_masters"], saved_sgd_on_1)]  # SGD, 2 -> 1
    cases += [(saved_sgd_on_1["sgd_weights"], saved_sgd_on_1["sgd_masters"], r["stage2"]) for r in results["load2"]]
    nostep = results["save2"][0]["stage3"]["nostep_weights"]  # Adam before its first step, stage 3, 2 -> 1
    cases.append((nostep, {n: nostep[n] for n in results["load1"][0]["stage3"]["weights_only_masters"]},
                  results["load1"][0]["stage3"]))
    for weights, masters, loaded in cases:
        assert loaded["weights_only"] == weights
        assert loaded["weights_only_masters"] == masters
        assert loaded["weights_only_kept_moments"] is True
        assert loaded["weights_only_remainder"] == {}


def test_universal_folder_that_came_with_a_checkpoint_is_checked(reshaped):
    out, results = reshaped
    planted = out / "planted"
    refused = results["load1"][0]["stage2"]["planted"]
    assert refused.startswith(
        f"CheckpointError: fabric.load({str(planted)!r}) refused to unpickle universal/checkpoint/zero/0.weight/fp32.pt (Weights "
        f"only load failed."
    )
    assert refused.endswith(
        f"with weights_only=True. It may contain code that would run on load. Fix: if you trust this checkpoint, call "
        f"fabric.load(path, state, weights_only=False); else delete {str(planted / 'universal')!r}, and fabric.load "
        f"makes it again from the checked files."
    )
