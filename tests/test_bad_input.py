"""Bad input, table-driven: each wrong use gets one specific error that says what went wrong and the fix,
and nothing on disk changes (the folder holding the checkpoints is compared before and after each case).

Rows: constructor and plugin arguments, fabric-run flags, environment variables, calls in the wrong
order, and checkpoints that cannot load (another model, another optimizer, damaged, truncated, empty,
another format, a missing path, a sharded folder of another strategy, a bare state dict).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric_lite import Fabric
from fabric_lite.cli import main as fabric_run
from fabric_lite.errors import (
    CheckpointError,
    ConfigurationError,
    FabricEnvironmentError,
    UsageError,
)
from fabric_lite.plan import resolve
from fabric_lite.plugins import Preemption
from fabric_lite.strategies.ddp import DDPStrategy
from fabric_lite.strategies.fsdp import FSDPStrategy

CPU = {"cpu": 1}
TORCHRUN = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}
SLURM = {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7",
         "SLURM_NODELIST": "n1", "SLURM_JOB_NAME": "train", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2",
         "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NTASKS_PER_NODE": "2"}


class FabricRunExit(Exception):
    """fabric-run returned non-zero; the message is what it printed."""


def cli(*argv: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = fabric_run(list(argv))
    if code != 0:
        raise FabricRunExit(f"exit {code}: {err.getvalue().strip()}")


def env_plan(**variables: str) -> Callable[[Any], Any]:
    return lambda ctx: resolve(env=variables, available=CPU)


def fabric() -> Fabric:
    f = Fabric(accelerator="cpu")
    f.launch()
    return f


def setup(in_features: int = 4, out_features: int = 2) -> tuple[Fabric, Any, Any]:
    f = fabric()
    torch.manual_seed(0)
    model = nn.Linear(in_features, out_features)
    model, optimizer = f.setup(model, torch.optim.Adam(model.parameters()))
    return f, model, optimizer


def load_into(path: str, *, in_features: int = 4, out_features: int = 2, strict: bool = True, optimizer: bool = False,
              model: nn.Module | None = None) -> Callable[[Any], Any]:
    def action(ctx: Any) -> Any:
        f, m, o = setup(in_features, out_features)
        if model is not None:
            m, o = f.setup(model, torch.optim.Adam(model.parameters()))
        state = {"model": m, "optimizer": o} if optimizer else {"model": m}
        return f.load(ctx / path, state, strict=strict)
    return action


def spawn_without_function(ctx: Any) -> Any:
    return Fabric(accelerator="cpu", strategy="ddp_spawn", devices=2).launch()


def not_launched(method: str) -> Callable[[Any], Any]:
    def action(ctx: Any) -> Any:
        f = Fabric(accelerator="cpu", strategy="ddp", devices=2)
        model = nn.Linear(2, 2)
        calls = {
            "setup": lambda: f.setup(model),
            "save": lambda: f.save(ctx / "new.ckpt", {"model": model}),
            "load": lambda: f.load(ctx / "good.ckpt", {"model": model}),
            "setup_dataloaders": lambda: f.setup_dataloaders(torch.utils.data.DataLoader(range(4))),
        }
        return calls[method]()
    return action


def backward_before_setup(ctx: Any) -> Any:
    model = nn.Linear(2, 1)
    fabric().backward(model(torch.ones(1, 2)).sum())


def setup_twice(ctx: Any) -> Any:
    f, model, _ = setup()
    f.setup(model)


def optimizer_twice(ctx: Any) -> Any:
    f, _model, optimizer = setup()
    f.setup(nn.Linear(2, 2), optimizer)


def loader_twice(ctx: Any) -> Any:
    f = fabric()
    loader = f.setup_dataloaders(torch.utils.data.DataLoader(range(4)))
    f.setup_dataloaders(loader)


def busy_port(ctx: Any) -> Any:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        cli("--devices", "2", "--main-port", str(sock.getsockname()[1]), str(ctx / "train.py"))


# (id, action(tmp_path), error type, message): the message is matched literally (re.escape) at its start.
CASES: list[tuple[str, Callable[[Any], Any], type[BaseException], str]] = [
    # ---- constructor, strategy and plugin arguments
    ("ddp-timeout-int", lambda ctx: DDPStrategy(timeout=60), ConfigurationError,
     "DDPStrategy(timeout=60) must be a datetime.timedelta, not int. Fix: DDPStrategy(timeout=datetime.timedelta(seconds=60))."),
    ("fsdp-timeout-negative", lambda ctx: FSDPStrategy(timeout=datetime.timedelta(seconds=-1)), ConfigurationError,
     "FSDPStrategy(timeout=datetime.timedelta(days=-1, seconds=86399)) is not positive: every collective would fail at once."),
    ("ddp-start-method", lambda ctx: DDPStrategy(start_method="thread"), ConfigurationError,
     "DDPStrategy(start_method='thread') is not a known start method. Choose one of: popen, spawn, fork, forkserver."),
    ("fsdp-state-dict-type", lambda ctx: FSDPStrategy(state_dict_type="half"), ConfigurationError,
     "FSDPStrategy(state_dict_type='half') is not a known state dict type. Choose one of: sharded, full."),
    ("fsdp-wrap-policy", lambda ctx: FSDPStrategy(auto_wrap_policy="Block"), ConfigurationError,
     "FSDPStrategy(auto_wrap_policy='Block') must be a set of nn.Module classes or a callable(module) -> bool."),
    ("preemption-sigkill", lambda ctx: Preemption(signals=("SIGKILL",)), ConfigurationError,
     "Preemption(signals=('SIGKILL',)) is not a signal a process can catch. Choose one of:"),
    ("preemption-requeue", lambda ctx: Preemption(requeue="always"), ConfigurationError,
     "Preemption(requeue='always') is not a known requeue mode. Choose one of: 'auto', True, False."),
    ("two-preemption-plugins", lambda ctx: Fabric(accelerator="cpu", plugins=[Preemption(), Preemption()]),
     ConfigurationError, "Fabric(plugins=[...]) received 2 Preemption plugins; only one can handle the signals."),
    ("plugin-of-unknown-kind", lambda ctx: Fabric(accelerator="cpu", plugins=[object()]), ConfigurationError,
     "Fabric(plugins=[object]) is not a supported plugin. Choose instances of: Precision, ClusterEnvironment, Preemption."),
    ("ddp-timeout-vs-env", lambda ctx: resolve(
        accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=datetime.timedelta(seconds=9)),
        env={"FABRIC_LITE_COLLECTIVE_TIMEOUT": "5"}, available=CPU), ConfigurationError,
     "DDPStrategy(timeout=datetime.timedelta(seconds=9)) conflicts with FABRIC_LITE_COLLECTIVE_TIMEOUT='5'."),
    # ---- fabric-run flags
    ("run-devices-zero", lambda ctx: cli("--devices", "0", str(ctx / "train.py")), FabricRunExit,
     "exit 2: fabric-run: --devices 0 asks for no device at all. Fix: --devices 1"),
    ("run-num-nodes-zero", lambda ctx: cli("--num-nodes", "0", str(ctx / "train.py")), FabricRunExit,
     "exit 2: fabric-run: --num-nodes 0 is not a number of machines. Choose one of: a positive count such as 2"),
    ("run-node-rank", lambda ctx: cli("--num-nodes", "2", "--node-rank", "2", str(ctx / "train.py")), FabricRunExit,
     "exit 2: fabric-run: --node-rank 2 does not exist with --num-nodes 2 (node ranks are 0 to 1)."),
    ("run-precision", lambda ctx: cli("--precision", "17-mixed", str(ctx / "train.py")), FabricRunExit,
     "exit 2: fabric-run: --precision 17-mixed is not a known precision. Choose one of:"),
    ("run-strategy", lambda ctx: cli("--strategy", "fancy", str(ctx / "train.py")), FabricRunExit,
     "exit 2: fabric-run: --strategy fancy is not a known strategy. Choose one of:"),
    ("run-accelerator", lambda ctx: cli("--accelerator", "tpuu", str(ctx / "train.py")), FabricRunExit,
     "exit 2: fabric-run: --accelerator tpuu is not a known accelerator."),
    ("run-collective-timeout", lambda ctx: cli("--collective-timeout", "soon", str(ctx / "train.py")), FabricRunExit,
     "exit 2: fabric-run: --collective-timeout soon is not a positive number of seconds. Fix: --collective-timeout 300"),
    ("run-missing-script", lambda ctx: cli("--devices", "1", str(ctx / "missing.py")), FabricRunExit,
     "exit 2: fabric-run: the script "),
    ("run-busy-port", busy_port, FabricRunExit, "exit 2: fabric-run: --main-port "),
    # ---- environment variables
    ("env-collective-timeout-negative", env_plan(FABRIC_LITE_COLLECTIVE_TIMEOUT="-5"), ConfigurationError,
     "FABRIC_LITE_COLLECTIVE_TIMEOUT='-5' is not a positive number of seconds."),
    ("env-devices", env_plan(FABRIC_LITE_DEVICES="many"), ConfigurationError,
     "FABRIC_LITE_DEVICES='many' (set by fabric-run) is not a device count or a list of device indices."),
    ("env-num-nodes", env_plan(FABRIC_LITE_NUM_NODES="two"), ConfigurationError,
     "FABRIC_LITE_NUM_NODES='two' (set by fabric-run) must be a positive int."),
    ("env-local-rank-text", env_plan(LOCAL_RANK="first"), FabricEnvironmentError,
     ("The environment variable LOCAL_RANK='first' is not an integer >= 0; the local environment reads it to place "
     "this process. Fix: unset it to run one plain process, or start the script with fabric-run, torchrun or srun")),
    ("env-world-size-text", env_plan(**{**TORCHRUN, "WORLD_SIZE": "2x"}), FabricEnvironmentError,
     "The environment variable WORLD_SIZE='2x' is not an integer >= 1; the torchelastic environment reads it"),
    ("env-world-size-zero", env_plan(**{**TORCHRUN, "WORLD_SIZE": "0"}), FabricEnvironmentError,
     "The environment variable WORLD_SIZE='0' is not an integer >= 1"),
    ("env-rank-outside-world", env_plan(**{**TORCHRUN, "RANK": "5"}), FabricEnvironmentError,
     "The torchelastic environment says this process is rank 5 of a world of 2 processes, but ranks run from 0 to 1."),
    ("env-local-rank-negative", env_plan(**{**TORCHRUN, "LOCAL_RANK": "-1"}), FabricEnvironmentError,
     "The environment variable LOCAL_RANK='-1' is not an integer >= 0"),
    ("env-local-rank-outside-node", env_plan(**{**TORCHRUN, "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"}),
     FabricEnvironmentError, ("The torchelastic environment says this process is local rank 3 of 2 processes on this "
     "machine, but local ranks run from 0 to 1.")),
    ("env-master-port", env_plan(**{**TORCHRUN, "MASTER_PORT": "http"}), FabricEnvironmentError,
     "The environment variable MASTER_PORT='http' is not a port number (0-65535)"),
    ("env-master-port-range", env_plan(MASTER_PORT="70000"), FabricEnvironmentError,
     "The environment variable MASTER_PORT='70000' is not a port number (0-65535)"),
    ("env-slurm-ntasks", env_plan(**{**SLURM, "SLURM_NTASKS": "four"}), FabricEnvironmentError,
     "The environment variable SLURM_NTASKS='four' is not an integer >= 1"),
    ("env-slurm-procid", env_plan(**{**SLURM, "SLURM_PROCID": "2"}), FabricEnvironmentError,
     "The slurm environment says this process is rank 2 of a world of 2 processes, but ranks run from 0 to 1."),
    # ---- calls in the wrong order
    ("backward-before-setup", backward_before_setup, UsageError,
     "fabric.backward(loss) was called before fabric.setup(model, optimizer)"),
    ("setup-before-launch", not_launched("setup"), UsageError,
     "fabric.setup() was called before fabric.launch(), but Fabric(strategy='ddp') runs 2 processes"),
    ("save-before-launch", not_launched("save"), UsageError,
     "fabric.save() was called before fabric.launch(), but Fabric(strategy='ddp') runs 2 processes"),
    ("load-before-launch", not_launched("load"), UsageError,
     "fabric.load() was called before fabric.launch(), but Fabric(strategy='ddp') runs 2 processes"),
    ("dataloaders-before-launch", not_launched("setup_dataloaders"), UsageError,
     "fabric.setup_dataloaders() was called before fabric.launch()"),
    ("spawn-launch-without-function", spawn_without_function, ConfigurationError,
     "Fabric(strategy='ddp_spawn') starts new processes that run a function, so fabric.launch() needs one."),
    ("setup-model-twice", setup_twice, ConfigurationError,
     "fabric.setup(model) got a model that is already set up. Fix: pass each model to setup only once."),
    ("setup-optimizer-twice", optimizer_twice, ConfigurationError,
     "fabric.setup() got an optimizer that is already set up. Fix: pass each optimizer only once."),
    ("setup-dataloader-twice", loader_twice, ConfigurationError,
     "fabric.setup_dataloaders() got a dataloader that is already set up. Fix: pass each dataloader once."),
    ("optimizer-as-model", lambda ctx: fabric().setup(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)),
     ConfigurationError, "fabric.setup() needs a torch.nn.Module first, got SGD."),
    ("scheduler-as-optimizer", lambda ctx: fabric().setup(nn.Linear(1, 1), object()), ConfigurationError,
     "fabric.setup() got a object where an optimizer was expected."),
    ("save-not-a-dict", lambda ctx: fabric().save(ctx / "new.ckpt", [nn.Linear(1, 1)]), ConfigurationError,
     "fabric.save(path, state=list) needs a dict of named objects."),
    ("save-reserved-key", lambda ctx: fabric().save(ctx / "new.ckpt", {"__fabric_lite__": 1}), ConfigurationError,
     "fabric.save: the state key '__fabric_lite__' is reserved. Fix: rename that entry."),
    ("save-over-a-folder", lambda ctx: fabric().save(ctx / "plain_folder", {"step": 1}), CheckpointError,
     "cannot write a file there: that path is an existing folder. Fix: choose a file path such as"),
    ("reduce-op", lambda ctx: fabric().all_reduce(torch.ones(1), reduce_op="avg"), ConfigurationError,
     "all_reduce(reduce_op='avg') is not a known reduction. Choose one of: sum, mean, max, min"),
    # ---- checkpoints that cannot load
    ("load-missing-path", load_into("nowhere/last.ckpt"), CheckpointError,
     "found no checkpoint: the path does not exist. Fix: check the path, or list the folder"),
    ("load-other-model-shapes", load_into("good.ckpt", out_features=3), CheckpointError,
     ("cannot load the checkpoint's 'model' into Linear: it was saved from a different model (shapes differ for "
     "weight (checkpoint 2x4, model 3x4), bias (checkpoint 2, model 3)). Fix: build the model exactly as when it was saved.")),
    ("load-other-model-keys", load_into("good.ckpt", model=nn.Sequential(nn.Linear(4, 2))), CheckpointError,
     ("cannot load the checkpoint's 'model' into Sequential: it was saved from a different model (the checkpoint lacks "
     "0.weight, 0.bias; the model has no weight, bias). Fix: build the model exactly as when it was saved, or pass "
     "strict=False to skip the keys that differ.")),
    ("load-other-optimizer", load_into("two_groups.ckpt", optimizer=True), CheckpointError,
     "cannot load the checkpoint's 'optimizer' into the Adam optimizer: it was saved for other parameters"),
    ("load-missing-key", lambda ctx: fabric().load(ctx / "good.ckpt", {"scheduler": nn.Linear(1, 1)}), CheckpointError,
     "cannot restore 'scheduler': the checkpoint has no such key (it has: 'model', 'optimizer', 'step')."),
    ("load-bare-state-dict", load_into("bare.pt"), CheckpointError,
     "this file holds a bare state dict (torch.save(model.state_dict())): use fabric.load_raw(path, model)"),
    ("load-raw-of-a-checkpoint", lambda ctx: fabric().load_raw(ctx / "good.ckpt", nn.Linear(4, 2)), CheckpointError,
     "got a fabric_lite checkpoint (a dict of named objects), not a raw state dict."),
    ("load-raw-other-model", lambda ctx: fabric().load_raw(ctx / "bare.pt", nn.Linear(4, 5)), CheckpointError,
     "fabric.load_raw('{ctx}/bare.pt', model) cannot load the state dict into Linear: it was saved from a different model"),
    ("load-garbage", load_into("garbage.ckpt"), CheckpointError,
     "got a file that is not a torch checkpoint: it is neither a zip archive (torch.save's format) nor a pickle"),
    ("load-text-file", load_into("notes.txt"), CheckpointError, "got a file that is not a torch checkpoint"),
    ("load-empty-file", load_into("empty.ckpt"), CheckpointError,
     "got an empty file (0 bytes): a save or copy that was cut off. Fix: load another checkpoint from"),
    ("load-truncated", load_into("truncated.ckpt"), CheckpointError,
     ("could not read the file: its zip structure is broken (File is not a zip file). It is not a complete torch "
     "checkpoint: it was cut off")),
    ("load-sharded-folder", load_into("sharded"), CheckpointError,
     "got a sharded checkpoint folder, which this strategy cannot read. Fix: load it with the strategy that wrote it"),
    ("load-plain-folder", load_into("plain_folder"), CheckpointError,
     "got a folder, but this strategy saves single-file checkpoints. Fix: pass the checkpoint file inside it."),
]


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    """A folder of checkpoints good and bad, written once per case."""
    f, model, optimizer = setup()
    f.backward(model(torch.ones(1, 4)).sum())
    optimizer.step()
    f.save(tmp_path / "good.ckpt", {"model": model, "optimizer": optimizer, "step": 3})
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint" + bytes(range(256)))
    (tmp_path / "notes.txt").write_text("step 3: loss 0.1\n")
    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "bare.pt")
    other = nn.Linear(4, 2)
    two_groups = torch.optim.Adam([{"params": [other.weight]}, {"params": [other.bias]}])
    other(torch.ones(1, 4)).sum().backward()
    two_groups.step()
    f.save(tmp_path / "two_groups.ckpt", {"model": other, "optimizer": two_groups})
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "COMPLETE").write_text("")
    (tmp_path / "sharded" / ".metadata").write_bytes(b"x")
    (tmp_path / "plain_folder").mkdir()
    (tmp_path / "plain_folder" / "a.ckpt").write_bytes(data)
    (tmp_path / "train.py").write_text("print('hello')\n")
    return tmp_path


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    result = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        result[str(path.relative_to(folder))] = (stat.st_size if path.is_file() else 0, stat.st_mtime_ns, digest)
    return result


@pytest.mark.parametrize(("action", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(action, error, message, ckpt_dir):
    before = snapshot(ckpt_dir)
    message = message.replace("{ctx}", str(ckpt_dir))
    with pytest.raises(error, match=re.escape(message)) as info:
        action(ckpt_dir)
    text = str(info.value)
    assert "Fix:" in text or "Choose one of" in text or "use fabric.load_raw" in text, text
    assert snapshot(ckpt_dir) == before, "the failed call changed files on disk"


def test_the_table_has_at_least_40_distinct_cases():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({c[3] for c in CASES}) == len(CASES)


def test_errors_are_value_errors_for_bad_input_and_runtime_errors_for_the_rest():
    for _, _, error, _ in CASES:
        assert issubclass(error, (ValueError, RuntimeError, FabricRunExit)), error
    assert os.environ.get("FABRIC_LITE_COLLECTIVE_TIMEOUT") is None
