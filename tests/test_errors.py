"""Every error a user can hit through the constructor or the plan, each matched against its message."""

from __future__ import annotations

import re

import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.environments import LocalEnvironment
from fabric_lite.errors import ConfigurationError, FabricEnvironmentError
from fabric_lite.plan import resolve
from fabric_lite.precision import HalfPrecision, MixedPrecision
from fabric_lite.strategies import SingleDeviceStrategy

CPU = {"cpu": 1}
TORCHRUN_2 = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SLURM_4 = {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7",
           "SLURM_STEP_ID": "0", "SLURM_NODELIST": "n1", "SLURM_JOB_NAME": "train", "SLURM_NTASKS_PER_NODE": "4"}
GPUS = {"cpu": 1, "cuda": 2}
MAC = {"cpu": 1, "mps": 1}

# (arguments, available devices, exception type, message pattern)
CASES = [
    (dict(accelerator="tpuu"), CPU, ConfigurationError,
     "Fabric(accelerator='tpuu') is not a known accelerator. Choose one of: auto, gpu, cpu, cuda, mps, xla."),
    (dict(accelerator=3), CPU, ConfigurationError, "Fabric(accelerator=3) is not a known accelerator. Choose one of:"),
    (dict(strategy="fancy"), CPU, ConfigurationError,
     "Fabric(strategy='fancy') is not a known strategy. Choose one of: single_device, ddp, ddp_spawn, ddp_fork, "
     "ddp_notebook, ddp_find_unused_parameters_true, ddp_spawn_find_unused_parameters_true, dp, fsdp, "
     "deepspeed, deepspeed_stage_1, deepspeed_stage_2, deepspeed_stage_2_offload, deepspeed_stage_3, "
     "deepspeed_stage_3_offload, deepspeed_stage_3_offload_nvme, single_xla, xla, xla_spmd, xla_fsdp."),
    (dict(strategy=None), CPU, ConfigurationError, "Fabric(strategy=None) is not a known strategy. Choose one of: auto,"),
    (dict(precision="17-mixed"), CPU, ConfigurationError,
     "Fabric(precision='17-mixed') is not a known precision. Choose one of: 32-true, 64-true, 16-mixed, bf16-mixed, 16-true, bf16-true."),
    (dict(precision=8), CPU, ConfigurationError, "Fabric(precision=8) is not a known precision."),
    (dict(devices="abc"), CPU, ConfigurationError,
     "Fabric(devices='abc') is not a device count or a list of device indices. Choose one of: 'auto', a positive int"),
    (dict(devices=-3), CPU, ConfigurationError, "Fabric(devices=-3) is negative. Choose one of: 'auto', a positive int"),
    (dict(devices="-2"), CPU, ConfigurationError, "Fabric(devices='-2') is negative."),
    (dict(devices=0), CPU, ConfigurationError, "Fabric(devices=0) asks for no device at all. Fix: devices=1"),
    (dict(devices=-1), CPU, ConfigurationError, "Fabric(devices=-1) means 'all devices', which is not defined for the CPU"),
    (dict(devices=[0, 1]), CPU, ConfigurationError,
     "Fabric(devices=[0, 1]) lists device indices, but on the CPU devices counts processes. Fix: devices=2."),
    (dict(devices=True), CPU, ConfigurationError, "Fabric(devices=True) has the wrong type (bool)."),
    (dict(devices=1.5), CPU, ConfigurationError, "Fabric(devices=1.5) has the wrong type (float)."),
    (dict(accelerator="cuda", devices=3), GPUS, FabricEnvironmentError,
     "Fabric(devices=3) asks for 3 cuda devices but only 2 are available. Fix: devices=2 or devices=-1."),
    (dict(accelerator="cuda", devices=[5]), GPUS, FabricEnvironmentError,
     "Fabric(devices=[5]) names cuda devices that do not exist or repeat: [5]. Available indices: [0, 1]."),
    (dict(accelerator="cuda", devices=[1, 1]), GPUS, FabricEnvironmentError,
     "Fabric(devices=[1, 1]) names cuda devices that do not exist or repeat"),
    (dict(accelerator="cuda", devices=[]), GPUS, ConfigurationError,
     "Fabric(devices=[]) must be a non-empty list of device indices. Fix: e.g. devices=[0, 1]."),
    (dict(accelerator="cuda"), CPU, FabricEnvironmentError,
     "Fabric(accelerator='cuda') cannot run here: no cuda device is available in this process. Available: cpu."),
    (dict(accelerator="mps"), CPU, FabricEnvironmentError, "Fabric(accelerator='mps') cannot run here"),
    (dict(accelerator="gpu"), CPU, FabricEnvironmentError,
     "Fabric(accelerator='gpu') found no GPU: neither CUDA nor MPS is available in this process."),
    (dict(accelerator="cuda", strategy=SingleDeviceStrategy(device="cpu")), GPUS, ConfigurationError,
     "Fabric(accelerator='cuda', strategy=SingleDeviceStrategy(device='cpu')) asks for two different devices."),
    (dict(precision="bf16-mixed", plugins=[HalfPrecision("16-true")]), CPU, ConfigurationError,
     "Fabric(precision='bf16-mixed', plugins=[HalfPrecision(...)]) sets the precision twice."),
    (dict(precision="16-true", strategy=SingleDeviceStrategy(precision=HalfPrecision("bf16-true"))), CPU, ConfigurationError,
     "Fabric(precision='16-true', strategy=SingleDeviceStrategy(precision=HalfPrecision('bf16-true'))) sets the precision twice."),
    (dict(plugins=[HalfPrecision("16-true"), HalfPrecision("bf16-true")]), CPU, ConfigurationError,
     "Fabric(plugins=[...]) received 2 precision plugins (HalfPrecision, HalfPrecision); only one can be active."),
    (dict(plugins=[LocalEnvironment({}), LocalEnvironment({})]), CPU, ConfigurationError,
     "received 2 cluster environments"),
    (dict(plugins=["bf16"]), CPU, ConfigurationError,
     "Fabric(plugins=[str]) is not a supported plugin. Choose instances of: Precision, ClusterEnvironment, Preemption."),
    (dict(num_nodes=0), CPU, ConfigurationError, "Fabric(num_nodes=0) must be a positive int."),
    (dict(num_nodes="two"), CPU, ConfigurationError, "Fabric(num_nodes='two') must be a positive int."),
    (dict(strategy="single_device", devices=2), CPU, ConfigurationError,
     "Fabric(strategy='single_device', devices=2, num_nodes=1) asks for 2 processes, but single_device runs exactly one."),
    (dict(strategy="dp"), CPU, ConfigurationError,
     "Fabric(strategy='dp', accelerator='cpu'): DataParallel splits batches over CUDA GPUs. Fix: strategy='ddp'"),
    (dict(devices=2, env=TORCHRUN_2), CPU, ConfigurationError,
     "Fabric(devices=2, num_nodes=1) expects 2 processes (2 per node), but torchelastic started 4 (4 per node). Fix: make them agree"),
    (dict(devices=2, num_nodes=2, env=SLURM_4), CPU, ConfigurationError,
     "Fabric(devices=2, num_nodes=2) expects 4 process(es), 2 on each of 2 node(s), but srun started 4 task(s) on 1 "
     "node(s), 4 per node (SLURM_NTASKS_PER_NODE=4). Each SLURM task is one process of the run, so the counts must "
     "agree. Fix: start 4 task(s) as Fabric expects: srun -N2 --ntasks-per-node=2 python "),
    (dict(devices=4, env={**SLURM_4, "SLURM_NTASKS_PER_NODE": "2(x2)"}), CPU, ConfigurationError,
     "Fabric(devices=4, num_nodes=1) expects 4 process(es), 4 on each of 1 node(s), but srun started 4 task(s) on 2 "
     "node(s), 2 per node"),
    (dict(accelerator="mps", precision="64-true"), MAC, ConfigurationError,
     "Fabric(accelerator='mps', precision='64-true') cannot work: MPS has no float64."),
]


@pytest.mark.parametrize(("kwargs", "available", "error", "message"), CASES, ids=[c[3][:60] for c in CASES])
def test_bad_arguments(kwargs, available, error, message):
    kwargs = {"env": {}, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        resolve(available=available, **kwargs)


def test_every_error_names_a_fix_or_the_choices():
    for kwargs, available, error, _ in CASES:
        with pytest.raises(error) as info:
            resolve(available=available, **{"env": {}, **kwargs})
        text = str(info.value)
        assert "Fix:" in text or "Choose" in text or "Available" in text, text


def test_bad_input_is_a_value_error_and_missing_hardware_a_runtime_error():
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(FabricEnvironmentError, RuntimeError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_fabric_constructor_reports_missing_cuda_for_real():
    with pytest.raises(FabricEnvironmentError, match=re.escape("Fabric(accelerator='cuda') cannot run here")):
        Fabric(accelerator="cuda")


def test_handover_bad_value_is_reported_with_its_source():
    with pytest.raises(ConfigurationError, match=re.escape("FABRIC_LITE_DEVICES='x2' (set by fabric-run) is not a device count")):
        resolve(env={"FABRIC_LITE_DEVICES": "x2"}, available=CPU)
    with pytest.raises(ConfigurationError, match=re.escape("FABRIC_LITE_PRECISION='9' (set by fabric-run) is not a known precision")):
        resolve(env={"FABRIC_LITE_PRECISION": "9"}, available=CPU)


def test_bf16_mixed_refuses_a_grad_scaler():
    with pytest.raises(ConfigurationError, match=re.escape("MixedPrecision('bf16-mixed', scaler=...) was given a GradScaler")):
        MixedPrecision("bf16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


def test_mixed_precision_unknown_name():
    with pytest.raises(ConfigurationError, match=re.escape("MixedPrecision(precision='8-mixed') is not a known mixed precision. Choose one of: 16-mixed, bf16-mixed.")):
        MixedPrecision("8-mixed", "cpu")
