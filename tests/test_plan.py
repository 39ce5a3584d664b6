"""Plan resolution: choices, aliases, reasons, hand-over variables and the error table."""

from __future__ import annotations

import re

import pytest

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError
from fabric_lite.environments import LocalEnvironment
from fabric_lite.plan import resolve
from fabric_lite.precision import HalfPrecision, MixedPrecision, Precision
from fabric_lite.strategies import SingleDeviceStrategy

CPU = {"cpu": 1}
GPUS = {"cpu": 1, "cuda": 4}
TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
}


def plan(**kwargs):
    kwargs.setdefault("env", {})
    kwargs.setdefault("available", CPU)
    return resolve(**kwargs)


def test_defaults_on_cpu():
    p = plan()
    assert (p.accelerator, p.strategy, p.precision, p.cluster_environment, p.launcher) == (
        "cpu", "single_device", "32-true", "local", "none"
    )
    assert p.devices == (0,) and p.num_nodes == 1 and p.world_size == 1
    assert p.reasons["precision"] == "default: full fp32"


def test_plan_is_frozen():
    p = plan()
    with pytest.raises(AttributeError):
        p.strategy = "ddp"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (16, "16-mixed"), ("16", "16-mixed"), ("16-mixed", "16-mixed"), ("bf16", "bf16-mixed"),
        ("BF16-Mixed", "bf16-mixed"), (32, "32-true"), ("32", "32-true"), (64, "64-true"), ("64", "64-true"),
        ("16-true", "16-true"), ("bf16-true", "bf16-true"), ("32-true", "32-true"),
    ],
)
def test_precision_aliases(given, expected):
    assert plan(precision=given).precision == expected


def test_alias_reason_is_recorded():
    assert plan(precision="bf16").reasons["precision"] == "alias 'bf16' of bf16-mixed"


def test_auto_prefers_cuda_then_cpu():
    assert plan(available={"cpu": 1, "cuda": 1}).accelerator == "cuda"
    assert plan(available=CPU).accelerator == "cpu"
    assert plan(accelerator="gpu", available=GPUS, devices=1).accelerator == "cuda"
    assert plan(available={"cpu": 1, "mps": 1}).accelerator == "mps"


def test_cuda_devices_parsing():
    assert plan(accelerator="cuda", devices=1, available=GPUS).devices == (0,)
    assert plan(accelerator="cuda", devices=[2], available=GPUS).devices == (2,)
    assert plan(accelerator="cuda", devices="[3]", available=GPUS).devices == (3,)
    assert plan(accelerator="cuda", devices="1", available=GPUS).devices == (0,)
    assert plan(accelerator="cuda", devices=" 1 ", available=GPUS).devices == (0,)
    assert plan(accelerator="cuda", devices="2,", available=GPUS).devices == (2,)


def test_auto_devices_on_cuda_is_all_of_them():
    p = plan(accelerator="cuda", devices="auto", available={"cpu": 1, "cuda": 1})
    assert p.devices == (0,)
    assert p.reasons["devices"] == "auto: all 1 cuda devices"


def test_all_devices_with_minus_one():
    assert plan(accelerator="cuda", devices=-1, available={"cpu": 1, "cuda": 1}).devices == (0,)
    assert plan(accelerator="cuda", devices="-1", available={"cpu": 1, "cuda": 1}).devices == (0,)


def test_single_device_cuda_index_used_for_device():
    fabric_plan = plan(accelerator="cuda", devices=[3], available=GPUS)
    assert fabric_plan.devices == (3,)
    assert fabric_plan.strategy == "single_device"


def test_strategy_instance_device_sets_accelerator():
    p = plan(strategy=SingleDeviceStrategy(device="cpu"))
    assert p.accelerator == "cpu"
    assert p.reasons["strategy"] == "a Strategy instance was passed"


def test_precision_plugin_wins_and_is_reported():
    p = plan(plugins=[HalfPrecision("bf16-true")])
    assert p.precision == "bf16-true"
    assert p.reasons["precision"] == "a Precision plugin was passed"


def test_strategy_instance_precision_is_kept():
    strategy = SingleDeviceStrategy(device="cpu", precision=HalfPrecision("bf16-true"))
    p = plan(strategy=strategy)
    assert p.precision == "bf16-true"
    assert plan(strategy=SingleDeviceStrategy(device="cpu", precision=HalfPrecision("bf16-true")), precision="bf16-true").precision == "bf16-true"


def test_torchelastic_environment_detected_and_external_launcher():
    p = plan(env=TORCHRUN)
    assert p.cluster_environment == "torchelastic"
    assert p.launcher == "external"
    assert p.reasons["cluster_environment"] == "detected torchelastic variables"


def test_environment_plugin_is_used():
    p = plan(plugins=LocalEnvironment({}))
    assert p.cluster_environment == "local"
    assert p.reasons["cluster_environment"] == "a ClusterEnvironment plugin was passed"


def test_handover_variables_fill_defaults():
    p = plan(env={"FABRIC_LITE_PRECISION": "bf16-mixed", "FABRIC_LITE_ACCELERATOR": "cpu", "FABRIC_LITE_DEVICES": "1"})
    assert p.precision == "bf16-mixed"
    assert p.reasons["precision"] == "from FABRIC_LITE_PRECISION=bf16-mixed (set by fabric-run)"


def test_handover_agrees_with_same_explicit_value_or_alias():
    assert plan(precision="bf16", env={"FABRIC_LITE_PRECISION": "bf16-mixed"}).precision == "bf16-mixed"


def test_handover_conflict_names_both_sources():
    with pytest.raises(ConfigurationError, match=r"Fabric\(precision='16-true'\) conflicts with FABRIC_LITE_PRECISION='bf16-mixed' set by fabric-run\. Fix: drop the argument"):
        plan(precision="16-true", env={"FABRIC_LITE_PRECISION": "bf16-mixed"})


def test_table_lists_every_component_with_reason():
    table = str(plan(precision="bf16"))
    lines = table.splitlines()
    assert lines[0].split() == ["component", "choice", "reason"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["accelerator", "strategy", "precision", "precision_plugin", "backend", "cluster_environment",
                     "launcher", "devices", "num_nodes"]
    assert "alias 'bf16' of bf16-mixed" in table


@pytest.mark.parametrize(
    ("strategy", "precision", "plugin", "backend"),
    [
        ("auto", "bf16-mixed", "MixedPrecision  bf16-mixed in plain PyTorch", "none"),
        ("fsdp", "16-mixed", "FSDPPrecision  fsdp + 16-mixed: FSDP casts the compute parameters", "gloo"),
        ("fsdp", "bf16-true", "HalfPrecision  bf16-true in plain PyTorch (no fsdp row)", "gloo"),
        ("deepspeed", "bf16-mixed", "DeepSpeedPrecision  deepspeed + bf16-mixed: the DeepSpeed engine holds", "gloo"),
        ("ddp", "32-true", "Precision  32-true in plain PyTorch (no ddp row)", "gloo"),
    ],
)
def test_plan_picks_the_precision_plugin_and_backend_with_reasons(strategy, precision, plugin, backend):
    """Precision is decided once: the plan's (family, precision) table names the plugin; build makes exactly that."""
    p = plan(strategy=strategy, precision=precision, devices=1 if strategy == "auto" else 2, available={"cpu": 2})
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in str(p).splitlines()[1:]}
    assert rows["precision_plugin"].startswith(plugin.replace("  ", " ")), rows
    assert rows["backend"].split()[0] == backend
    fabric = Fabric(accelerator="cpu", devices=1 if strategy == "auto" else 2, strategy=strategy, precision=precision)
    assert type(fabric.strategy.precision).__name__ == plugin.split()[0]


def test_build_never_changes_the_strategy_instance_the_user_passed():
    from fabric_lite.strategies.ddp import DDPStrategy

    strategy = DDPStrategy(static_graph=True)
    before = (strategy.precision, strategy.cluster_environment, strategy.parallel_devices, strategy.num_nodes)
    fabric = Fabric(accelerator="cpu", devices=3, num_nodes=2, strategy=strategy, precision="bf16-mixed")
    assert fabric.strategy is not strategy and fabric.strategy.num_nodes == 2
    assert (strategy.precision, strategy.cluster_environment, strategy.parallel_devices, strategy.num_nodes) == before
    assert dict(strategy.arguments) == {"static_graph": True}


def test_fabric_exposes_the_plan():
    fabric = Fabric(accelerator="cpu", precision=64)
    assert fabric.plan.precision == "64-true"
    assert "64-true" in str(fabric.plan)


def test_resolve_has_no_side_effects(monkeypatch):
    import os

    before = dict(os.environ)
    plan(precision="bf16", env={"FABRIC_LITE_PRECISION": "bf16-mixed"})
    assert dict(os.environ) == before


def test_instantiate_builds_matching_objects():
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    assert isinstance(fabric.strategy, SingleDeviceStrategy)
    assert isinstance(fabric.strategy.precision, MixedPrecision)
    assert fabric.strategy.precision.device == "cpu"
    assert type(Fabric(accelerator="cpu").strategy.precision) is Precision


def test_handover_accepts_a_strategy_instance_of_the_same_name():
    from fabric_lite.strategies.ddp import DDPStrategy

    p = plan(strategy=DDPStrategy(static_graph=True), env={"FABRIC_LITE_STRATEGY": "ddp"})
    assert p.strategy == "ddp" and p.strategy_instance is not None
    with pytest.raises(ConfigurationError, match=re.escape("conflicts with FABRIC_LITE_STRATEGY='fsdp'")):
        plan(strategy=DDPStrategy(), env={"FABRIC_LITE_STRATEGY": "fsdp"})


def test_processes_placed_by_another_tool_are_not_credited_to_the_subprocess_launcher_alone():
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    plan = resolve(accelerator="cpu", devices=2, strategy="ddp", env=env)
    assert plan.launcher == "external"
    assert "another tool (RANK / LOCAL_RANK set)" in plan.reasons["launcher"]
