"""ParallelStrategy: the one base of DDP, FSDP and DeepSpeed; process options as one frozen Processes value;
``strategy.arguments`` records what the user gave, and the plan fills in only the rest (never changing the instance)."""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
from datetime import timedelta

import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError
from fabric_lite.strategies.ddp import DDPStrategy
from fabric_lite.strategies.fsdp import FSDPStrategy
from fabric_lite.strategies.parallel import ParallelStrategy, Processes


def test_fsdp_and_deepspeed_are_parallel_strategies_not_ddp():
    assert not isinstance(FSDPStrategy(), DDPStrategy)
    assert isinstance(FSDPStrategy(), ParallelStrategy) and isinstance(DDPStrategy(), ParallelStrategy)
    if importlib.util.find_spec("deepspeed") is not None:
        from fabric_lite.strategies.deepspeed import DeepSpeedStrategy

        assert not isinstance(DeepSpeedStrategy(), DDPStrategy) and isinstance(DeepSpeedStrategy(), ParallelStrategy)


def test_process_options_are_one_frozen_value():
    strategy = FSDPStrategy(timeout=timedelta(seconds=5), num_nodes=2, state_dict_type="full")
    assert strategy.processes == Processes(timeout=timedelta(seconds=5), num_nodes=2, owner="FSDPStrategy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        strategy.processes.num_nodes = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        strategy.timeout = timedelta(seconds=1)  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match=r"^FSDPStrategy\(start_method='thread'\) is not a known start method"):
        FSDPStrategy(start_method="thread")


def test_arguments_record_what_the_user_gave_positional_or_keyword():
    cpu = [torch.device("cpu")] * 2
    ddp = DDPStrategy(None, cpu, static_graph=True, timeout=timedelta(seconds=9))
    assert dict(ddp.arguments) == {"accelerator": None, "parallel_devices": cpu, "static_graph": True,
                                   "timeout": timedelta(seconds=9)}
    assert ddp.ddp_kwargs == {"static_graph": True} and ddp.num_processes == 2
    assert dict(pickle.loads(pickle.dumps(ddp)).arguments) == dict(ddp.arguments)  # spawn pickles the strategy
    assert dict(FSDPStrategy(state_dict_type="full").arguments) == {"state_dict_type": "full"}


def test_the_plan_fills_in_only_what_the_instance_was_not_given():
    mine = [torch.device("cpu")] * 2
    strategy = DDPStrategy(parallel_devices=mine, timeout=timedelta(seconds=40), process_group_backend="gloo")
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy, precision="bf16-mixed")
    built = fabric.strategy
    assert built is not strategy and type(built) is DDPStrategy
    assert built.parallel_devices == mine and built.timeout == timedelta(seconds=40)
    assert type(built.precision).__name__ == "MixedPrecision" and type(strategy.precision).__name__ == "Precision"
    assert built.accelerator is not None and strategy.accelerator is None


def test_strategies_without_a_process_group_share_the_device_arguments():
    """XLA, XLA-SPMD and DP take Lightning's positional device arguments through one helper, not three copies."""
    from fabric_lite.strategies.dp import DataParallelStrategy
    from fabric_lite.strategies.xla import XLAStrategy
    from fabric_lite.strategies.xla_spmd import XLASPMDStrategy

    xla = [torch.device("xla", 0), torch.device("xla", 1)]
    assert XLAStrategy(None, xla, num_nodes=1).parallel_devices == xla
    assert XLASPMDStrategy(parallel_devices=xla, fsdp=True).parallel_devices == xla
    gpus = [torch.device("cuda", 1)]
    assert DataParallelStrategy(None, gpus).parallel_devices == gpus
    assert dict(DataParallelStrategy(None, gpus).arguments) == {"accelerator": None, "parallel_devices": gpus}
    with pytest.raises(TypeError, match=r"^XLAStrategy\(\) got an unexpected keyword argument 'devices'$"):
        XLAStrategy(devices=2)
    with pytest.raises(TypeError, match=r"^DataParallelStrategy\(\) got multiple values for argument 'accelerator'$"):
        DataParallelStrategy(None, accelerator=None)
