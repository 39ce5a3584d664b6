"""XLA in the plan and the objects built from it, without an XLA device (runs in the main suite).

Plans are resolved for a hypothetical host with two XLA devices (``available``); building the
strategy and precision objects needs no torch_xla either. Without torch_xla installed, asking for
XLA names the extra and scripts/test-xla.sh.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.build import instantiate, make_launcher
from fabric_lite.environments.xla import XLAEnvironment
from fabric_lite.errors import ConfigurationError, MissingPackageError, UsageError
from fabric_lite.plan import resolve
from fabric_lite.precision.xla import XLAPrecision

XLA_HOST = {"cpu": 1, "xla": 2}
no_torch_xla = pytest.mark.skipif(
    importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed here: the missing-package error cannot occur"
)


def plan(**kwargs):
    return resolve(env={}, available=XLA_HOST, **kwargs)


def summary(p):
    return p.accelerator, p.strategy, p.precision, p.launcher, p.devices


def test_auto_prefers_xla_and_picks_the_strategy_by_device_count():
    assert summary(plan()) == ("xla", "xla", "32-true", "xla", (0, 1))
    assert plan().reasons["launcher"] == "torch_xla.launch makes one replica per XLA device"
    assert summary(plan(devices=1)) == ("xla", "single_xla", "32-true", "none", (0,))
    assert summary(plan(accelerator="tpu", devices=1)) == ("xla", "single_xla", "32-true", "none", (0,))


def test_xla_strategies_and_their_launchers():
    assert summary(plan(strategy="xla", devices=1)) == ("xla", "xla", "32-true", "xla", (0,))  # torch_xla.launch, in-process
    for name in ("xla_spmd", "xla_fsdp"):  # one process drives the whole mesh
        assert summary(plan(strategy=name, precision="bf16-true")) == ("xla", name, "bf16-true", "none", (0, 1))
    assert summary(plan(strategy="single_xla", devices=1)) == ("xla", "single_xla", "32-true", "none", (0,))
    with pytest.raises(ConfigurationError, match=r"^Fabric\(strategy='single_xla', devices=2\) asks for 2 XLA devices, but "
                       r"single_xla runs on exactly one. Fix: devices=1, or strategy='xla' \(one replica per device\)"):
        plan(strategy="single_xla")


def test_built_objects_need_no_torch_xla():
    strategy = instantiate(plan(devices=1, precision="bf16-true"))
    assert type(strategy).__name__ == "SingleDeviceXLAStrategy"
    assert strategy.root_device == torch.device("xla", 0)
    assert isinstance(strategy.precision, XLAPrecision) and strategy.precision.name == "bf16-true"
    multi = instantiate(plan())
    assert type(multi).__name__ == "XLAStrategy" and multi.world_size == 2 and multi.global_rank == 0
    assert type(make_launcher(plan())).__name__ == "XLALauncher"
    spmd = instantiate(plan(strategy="xla_fsdp"))
    assert (type(spmd).__name__, spmd.name, spmd.axis) == ("XLASPMDStrategy", "xla_fsdp", "fsdp")
    with pytest.raises(UsageError, match=r"^Fabric\(strategy='xla_fsdp'\).strategy.mesh was read before fabric.launch\(\), "
                       r"which builds it. Fix: call fabric.launch\(\) first.$"):
        _ = spmd.mesh


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "64-true"])
def test_xla_refuses_precisions_it_cannot_run(precision):
    with pytest.raises(ConfigurationError) as error:
        plan(precision=precision)
    assert str(error.value) == (
        f"Fabric(accelerator='xla', precision={precision!r}) cannot work: XLA devices take the model's dtype (no "
        f"autocast or GradScaler here). Choose one of: 32-true, 16-true, bf16-true. Fix: precision='bf16-true' for "
        f"half precision on XLA."
    )


def test_xla_and_other_strategies_do_not_mix():
    with pytest.raises(ConfigurationError, match=r"^Fabric\(accelerator='xla', strategy='ddp'\): ddp does not run on XLA "
                       r"devices. Choose one of: single_xla, xla, xla_spmd, xla_fsdp.$"):
        plan(strategy="ddp")
    with pytest.raises(ConfigurationError, match=r"^Fabric\(strategy='xla_spmd', accelerator='cpu'\): xla_spmd runs on "
                       r"XLA devices only. Fix: accelerator='xla' \(or 'auto'\) with PJRT_DEVICE set, or strategy='ddp'"):
        plan(strategy="xla_spmd", accelerator="cpu")
    with pytest.raises(ConfigurationError, match=r"^Fabric\(strategy='xla_fsdp', num_nodes=2\): this SPMD strategy builds "
                       r"a mesh of one host's devices. Fix: num_nodes=1, or strategy='xla'"):
        plan(strategy="xla_fsdp", num_nodes=2)


def test_xla_environment_detects_torch_xla_replicas():
    assert XLAEnvironment.detect({"PJRT_LOCAL_PROCESS_RANK": "1", "PJRT_LOCAL_PROCESS_COUNT": "2"})
    assert not XLAEnvironment.detect({"PJRT_LOCAL_PROCESS_RANK": "1"})
    assert not XLAEnvironment({}).creates_processes_externally
    assert XLAEnvironment({"PJRT_LOCAL_PROCESS_RANK": "0", "PJRT_LOCAL_PROCESS_COUNT": "1"}).creates_processes_externally


def test_xla_precision_casts_like_a_true_precision():
    module = XLAPrecision("bf16-true").convert_module(torch.nn.Linear(2, 2))
    assert module.weight.dtype == torch.bfloat16
    assert XLAPrecision().is_identity and not XLAPrecision("16-true").is_identity
    with pytest.raises(ConfigurationError, match=r"^XLAPrecision\('bf16-mixed'\) is not a precision XLA devices take. "
                       r"Choose one of: 32-true, 16-true, bf16-true."):
        XLAPrecision("bf16-mixed")


@no_torch_xla
@pytest.mark.parametrize(
    "kwargs, asked",
    [
        ({"accelerator": "xla"}, "Fabric(accelerator='xla')"),
        ({"accelerator": "tpu", "devices": 2}, "Fabric(accelerator='tpu')"),
        ({"strategy": "xla"}, "Fabric(strategy='xla')"),
        ({"strategy": "xla_spmd"}, "Fabric(strategy='xla_spmd')"),
        ({"strategy": "xla_fsdp"}, "Fabric(strategy='xla_fsdp')"),
        ({"strategy": "single_xla"}, "Fabric(strategy='single_xla')"),
    ],
)
def test_without_torch_xla_the_error_names_the_extra_and_the_script(kwargs, asked):
    with pytest.raises(MissingPackageError) as error:
        Fabric(**kwargs)
    assert isinstance(error.value, ImportError)
    assert str(error.value) == (
        f"{asked} (XLA devices: TPU, or the CPU through PJRT_DEVICE=CPU) needs the package 'torch_xla', which is not "
        f"installed. Fix: pip install 'torch-fabric-lite[xla]' (in a source checkout: pip install -e '.[xla]'); torch_xla 2.9 needs torch 2.9 exactly: scripts/test-xla.sh "
        f"builds such a venv next to the project's and runs the XLA tests there."
    )


def test_import_fabric_lite_never_imports_torch_xla():
    code = "import sys, fabric_lite; from fabric_lite import Fabric; Fabric(accelerator='cpu'); print('torch_xla' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PJRT_DEVICE": "CPU"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
