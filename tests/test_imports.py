"""Lightning's import paths for strategies and plugins work after the swap, and cost nothing until used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import fabric_lite.plugins
import fabric_lite.strategies
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.environments.local import LocalEnvironment
from fabric_lite.precision.base import Precision
from fabric_lite.strategies.base import Strategy

# lightning.fabric.strategies (2.6) names that fabric_lite has. Not here: ModelParallelStrategy (no tensor
# parallelism) and XLAFSDPStrategy (torch_xla's FSDPv1; strategy="xla_fsdp" is XLASPMDStrategy's FSDPv2 here).
STRATEGIES = {
    "DDPStrategy": "fabric_lite.strategies.ddp",
    "DataParallelStrategy": "fabric_lite.strategies.dp",
    "DeepSpeedStrategy": "fabric_lite.strategies.deepspeed",
    "FSDPStrategy": "fabric_lite.strategies.fsdp",
    "ParallelStrategy": "fabric_lite.strategies.parallel",
    "SingleDeviceStrategy": "fabric_lite.strategies.single_device",
    "SingleDeviceXLAStrategy": "fabric_lite.strategies.xla",
    "Strategy": "fabric_lite.strategies.base",
    "XLAStrategy": "fabric_lite.strategies.xla",
}
# lightning.fabric.plugins.environments (2.6); LightningEnvironment is LocalEnvironment here.
ENVIRONMENTS = {
    "ClusterEnvironment": "fabric_lite.environments.base",
    "KubeflowEnvironment": "fabric_lite.environments.kubeflow",
    "LSFEnvironment": "fabric_lite.environments.lsf",
    "LightningEnvironment": "fabric_lite.environments.local",
    "MPIEnvironment": "fabric_lite.environments.mpi",
    "SLURMEnvironment": "fabric_lite.environments.slurm",
    "TorchElasticEnvironment": "fabric_lite.environments.torchelastic",
    "XLAEnvironment": "fabric_lite.environments.xla",
}
# lightning.fabric.plugins.precision (2.6) names that fabric_lite has. Not here: BitsandbytesPrecision,
# TransformerEnginePrecision; nor the CheckpointIO plugins (Fabric(plugins=[...]) takes no checkpoint IO).
PRECISIONS = {
    "DeepSpeedPrecision": "fabric_lite.precision.deepspeed",
    "DoublePrecision": "fabric_lite.precision.true",
    "FSDPPrecision": "fabric_lite.precision.fsdp",
    "HalfPrecision": "fabric_lite.precision.true",
    "MixedPrecision": "fabric_lite.precision.amp",
    "Precision": "fabric_lite.precision.base",
    "XLAPrecision": "fabric_lite.precision.xla",
}
HEAVY = ("torch.distributed.fsdp", "torch.distributed.tensor", "deepspeed", "torch_xla", "torch._dynamo", "tensorboardX")


def _defined(module: str, name: str) -> object:
    implementation = "LocalEnvironment" if name == "LightningEnvironment" else name
    return getattr(importlib.import_module(module), implementation)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_export_lightnings_names(name):
    value = getattr(fabric_lite.strategies, name)
    assert value is _defined(STRATEGIES[name], name)
    assert issubclass(value, Strategy)
    assert name in fabric_lite.strategies.__all__ and name in dir(fabric_lite.strategies)


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
def test_plugins_export_lightnings_environments_flat_and_under_environments(name):
    flat = getattr(fabric_lite.plugins, name)
    assert flat is getattr(fabric_lite.plugins.environments, name) is _defined(ENVIRONMENTS[name], name)
    assert issubclass(flat, ClusterEnvironment)
    assert name in fabric_lite.plugins.__all__ and name in fabric_lite.plugins.environments.__all__


@pytest.mark.parametrize("name", sorted(PRECISIONS))
def test_plugins_export_lightnings_precisions_flat_and_under_precision(name):
    flat = getattr(fabric_lite.plugins, name)
    assert flat is getattr(fabric_lite.plugins.precision, name) is _defined(PRECISIONS[name], name)
    assert issubclass(flat, Precision)
    assert name in fabric_lite.plugins.__all__ and name in fabric_lite.plugins.precision.__all__


def test_every_name_in_all_resolves():
    for module in (fabric_lite.strategies, fabric_lite.plugins, fabric_lite.plugins.environments,
                   fabric_lite.plugins.precision):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{module.__name__}.__all__ lists {missing}, which do not resolve"


def test_lightning_environment_is_the_local_environment():
    from fabric_lite.plugins import LightningEnvironment

    env = LightningEnvironment()
    assert isinstance(env, LocalEnvironment)
    assert env.world_size() == 1 and env.global_rank() == 0 and not env.creates_processes_externally


def test_existing_plugin_imports_keep_working():
    from fabric_lite.plugins import Preemption, TruePrecision
    from fabric_lite.utilities.preemption import Preemption as Defined

    assert Preemption is Defined and issubclass(TruePrecision, Precision)


@pytest.mark.parametrize("module", ["fabric_lite.strategies", "fabric_lite.plugins",
                                    "fabric_lite.plugins.precision"])
def test_an_unknown_name_is_an_import_error_naming_it(module):
    with pytest.raises(ImportError, match=rf"cannot import name 'TransformerEnginePrecision' from '{module}'"):
        exec(f"from {module} import TransformerEnginePrecision", {})
    with pytest.raises(AttributeError, match=rf"module '{module}' has no attribute 'Nope'"):
        getattr(importlib.import_module(module), "Nope")


def test_importing_the_packages_and_their_light_names_loads_no_heavy_module():
    code = (
        "import sys\n"
        "import fabric_lite\n"
        "from fabric_lite.strategies import Strategy, SingleDeviceStrategy\n"
        "from fabric_lite.plugins import SLURMEnvironment, LightningEnvironment, MixedPrecision, Precision\n"
        "import fabric_lite.plugins.environments, fabric_lite.plugins.precision\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or any(m.startswith(h) for h in heavy)))\n"
        "from fabric_lite.strategies import FSDPStrategy\n"
        "print('torch.distributed.fsdp' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "True"]  # lazy until FSDPStrategy is asked for
