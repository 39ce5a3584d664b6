"""DDP on real CPU processes (gloo) under every launcher: training, collectives, samplers, checkpoints, fail-fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from launch_commands import LAUNCHERS, command, free_port

SCRIPTS = Path(__file__).parent / "_scripts"
CHECKS = str(SCRIPTS / "ddp_checks.py")
FAIL = str(SCRIPTS / "fail_one_rank.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(cmd, timeout=180, cwd=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def reference_weights():
    """The same training in one process on the global batch (2 ranks x 8 samples, interleaved)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        rank0 = list(range(16 * step, 16 * step + 16, 2))
        rank1 = [i + 1 for i in rank0]
        opt.zero_grad()
        loss = (nn.functional.mse_loss(model(x[rank0]), y[rank0]) + nn.functional.mse_loss(model(x[rank1]), y[rank1])) / 2
        loss.backward()
        opt.step()
    return [p.detach().flatten().tolist() for p in model.parameters()]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_ranks_under_every_launcher(launcher, tmp_path):
    result = run(command(launcher, CHECKS, str(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    expected_launcher = {"fabric-run": "external", "torchrun": "external"}.get(launcher, launcher)
    assert r0["launcher"] == expected_launcher
    assert (r0["world"], r1["world"], r0["local_rank"], r1["local_rank"]) == (2, 2, 0, 1)
    assert r0["strategy"] == "DDPStrategy"
    # identical parameters on both ranks, equal to one process training on the global batch
    assert r0["weights"] == r1["weights"]
    for got, want in zip(r0["weights"], reference_weights()):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-6)
    # every sample seen exactly once across the ranks
    assert len(r0["first_column_seen"]) == len(r1["first_column_seen"]) == 32
    assert not set(r0["first_column_seen"]) & set(r1["first_column_seen"])
    # collectives
    for r in (r0, r1):
        assert (r["sum"], r["mean"], r["max"], r["min"], r["int_mean"], r["dict_sum"]) == (3.0, 1.5, 2.0, 1.0, 0.5, 4.0)
        assert r["gather_equal"] == [[0.0, 0.0], [1.0, 1.0]] and r["gather_scalar"] == [0, 1]
        assert r["gather_uneven"] == [0.0, 0.0, 1.0]  # rank 0 sent 1 row, rank 1 sent 2: concatenated in rank order
        assert r["broadcast_obj"] == {"from": 1, "list": [1]} and r["broadcast_tensor"] == [0.0]
        assert r["decision_all"] is False and r["decision_any"] is True
        assert r["synced_grad"] == [3.0] * 4  # mean of the two ranks' gradients
        assert r["loaded_step"] == 5 and r["checkpoint_keys"] == ["bias", "weight"]
    assert r0["sync_grads"] == [2.0] * 3 and r1["sync_grads"] == [4.0] * 3
    assert r0["unsynced_grad"] == [2.0] * 4 and r1["unsynced_grad"] == [4.0] * 4  # no_backward_sync kept them local
    # samplers: shuffled partitions that change per epoch, uneven split, padding, drop_last, custom sampler
    assert sorted(r0["shuffled"] + r1["shuffled"]) == list(range(10))
    assert sorted(r0["shuffled_epoch2"] + r1["shuffled_epoch2"]) == list(range(10))
    assert r0["shuffled"] != r0["shuffled_epoch2"]
    assert r0["uneven"] == [0, 2, 4, 6, 8] and r1["uneven"] == [1, 3, 5, 7]
    assert r0["padded"] == [0, 2, 4, 6, 8] and r1["padded"] == [1, 3, 5, 7, 0]
    assert r0["dropped"] == [0, 2, 4, 6] and r1["dropped"] == [1, 3, 5, 7]
    assert sorted(set(r0["custom"] + r1["custom"])) == [0, 2, 4, 6, 8]
    assert r0["untouched"] == r1["untouched"] == list(range(10))
    assert "cannot split a DataLoader with a custom batch_sampler (list) across ranks." in r0["batch_sampler_error"]
    if launcher in ("spawn", "fork"):
        assert json.loads((tmp_path / "returned.json").read_text()) == 0  # rank 0's return value


def test_four_ranks(tmp_path):
    result = run(command("subprocess", CHECKS, str(tmp_path), devices=4), timeout=240)
    assert result.returncode == 0, result.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert [r["world"] for r in ranks] == [4] * 4
    assert all(r["weights"] == ranks[0]["weights"] for r in ranks)
    assert ranks[0]["sum"] == 10.0 and ranks[3]["gather_uneven"] == [0.0, 0.0, 1.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 3.0]


def test_two_nodes_on_one_machine_form_one_world(tmp_path):
    port = str(free_port())
    base = [sys.executable, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "2", "--num-nodes", "2",
            "--main-address", "127.0.0.1", "--main-port", port]
    nodes = [subprocess.Popen([*base, "--node-rank", str(n), CHECKS, str(tmp_path)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (0, 1)]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert [(r["world"], r["node_rank"], r["local_rank"]) for r in ranks] == [(4, 0, 0), (4, 0, 1), (4, 1, 0), (4, 1, 1)]
    assert all(r["weights"] == ranks[0]["weights"] for r in ranks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its parent is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("mode", ["raise", "kill"])
@pytest.mark.parametrize("launcher", ["subprocess", "spawn", "fork", "fabric-run", "torchrun"])
def test_one_rank_failing_stops_the_whole_job(launcher, mode, tmp_path):
    started = time.time()
    result = run([*command(launcher, FAIL, str(tmp_path)), "--mode", mode], timeout=120)
    elapsed = time.time() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert elapsed < 60, f"the job took {elapsed:.0f} s to stop: it waited for a timeout"
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)], f"orphans left: {output}"
    if mode == "raise":
        assert "RuntimeError: rank 1 broke on purpose" in output
    if launcher in ("subprocess", "spawn", "fork"):
        how = ("exit code 1" if launcher == "subprocess" else "an exception") if mode == "raise" else "signal SIGKILL"
        report = output[output.index("fabric_lite: Root cause:"):]
        assert report.startswith("fabric_lite: Root cause: rank 1 (local rank 1) on "), output
        assert report.splitlines()[0].endswith(f"failed with {how}."), output
        if mode == "raise":
            assert "RuntimeError: rank 1 broke on purpose" in report
    else:
        report = output[output.index("Root Cause (first observed failure)"):]
        assert "rank      : 1 (local_rank: 1)" in report, output
        assert ("RuntimeError: rank 1 broke on purpose" in report) if mode == "raise" else ("SIGKILL" in report), output


MISUSE = '''
import os, socket, sys
from fabric_lite import Fabric
mode = sys.argv[1]
if mode == "port":
    busy = socket.socket(); busy.bind(("127.0.0.1", 0)); busy.listen()
    os.environ["MASTER_PORT"] = str(busy.getsockname()[1])
    Fabric(accelerator="cpu", devices=2, strategy=sys.argv[2]).launch(lambda fabric: None)
elif mode == "no_function":
    Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch()
elif mode == "not_launched":
    import torch
    Fabric(accelerator="cpu", devices=2, strategy="ddp").setup(torch.nn.Linear(1, 1))
'''


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["port", "ddp_spawn"], "is already in use on 127.0.0.1, so the processes cannot meet there. Fix: unset MASTER_PORT"),
        (["port", "ddp"], "is already in use on 127.0.0.1, so the processes cannot meet there. Fix: unset MASTER_PORT"),
        (["no_function"], "Fabric(strategy='ddp_spawn') starts new processes that run a function, so fabric.launch() needs one."),
        (["not_launched"], "fabric.setup() was called before fabric.launch(), but Fabric(strategy='ddp') runs 2 processes"),
    ],
)
def test_launch_misuse_errors(args, message, tmp_path):
    script = tmp_path / "misuse.py"
    script.write_text(MISUSE)
    result = run([sys.executable, str(script), *args], timeout=60)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_strategy_instance_gets_devices_nodes_and_environment_from_the_plan():
    from fabric_lite import Fabric
    from fabric_lite.strategies.ddp import DDPStrategy

    fabric = Fabric(accelerator="cpu", devices=3, num_nodes=2, strategy=DDPStrategy(static_graph=True))
    strategy = fabric.strategy
    assert len(strategy.parallel_devices) == 3 and strategy.num_nodes == 2
    assert strategy.world_size == 6 and strategy.ddp_kwargs == {"static_graph": True}
    assert fabric.plan.launcher == "subprocess"


def test_a_run_that_ends_in_a_collective_exits_cleanly(tmp_path):
    """Without a teardown at exit, gloo aborted a rank (SIGABRT at C++ static destruction) in ~1 of 5 such runs."""
    script = str(SCRIPTS / "end_in_collective.py")
    failures = []
    for attempt in range(5):
        runs = [subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
                for _ in range(2)]
        for run_ in runs:
            out, _ = run_.communicate(timeout=120)
            if run_.returncode != 0 or out.count("total 2.0") != 2:
                failures.append((attempt, run_.returncode, out[-500:]))
    assert not failures, failures
