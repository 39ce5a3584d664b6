"""fabric-run's hand-over to torch.distributed.run, with real processes: OMP_NUM_THREADS per rank, -m, --no-python,
per-rank output (--local-ranks-filter, --tee, --log-dir), options after `--`, and an elastic c10d job of 1 to 2 nodes."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabric_lite.cli import main
from fabric_lite.utilities.distributed import find_free_port

PROBE = textwrap.dedent(
    """
    import os, sys
    import torch
    print("PROBE", os.environ["RANK"], os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads(),
          os.environ.get("ROLE_NAME"), sys.argv[1:], flush=True)
    """
)
BANNER = "Setting OMP_NUM_THREADS environment variable for each process"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fabric_run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} if env is None else env
    return subprocess.run([sys.executable, "-m", "fabric_lite.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One 2-process run of a module (-m) with OMP_NUM_THREADS unset, rank 1 alone on screen, both ranks teed to
    files, and torch.distributed.run's --role given after `--`."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe_module.py").write_text(PROBE)
    logs = folder / "logs"
    result = fabric_run("--accelerator", "cpu", "--devices", "2", "--local-ranks-filter", "1", "--tee", "3",
                        "--log-dir", str(logs), "--", "--role", "trainer", "-m", "probe_module", "a", "--b",
                        cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    files = {int(path.parent.name): path.read_text() for path in logs.rglob("stdout.log")}
    return result, files


def probe_line(text: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if "PROBE" in line]
    return line.split("PROBE", 1)[1].split(maxsplit=4)


def test_each_rank_gets_the_cores_shared_out_without_torchruns_banner(probed):
    result, files = probed
    expected = str(max(1, cores() // 2))
    assert sorted(files) == [0, 1]
    for rank, text in files.items():
        got_rank, omp, torch_threads, _, _ = probe_line(text)
        assert (got_rank, omp, torch_threads) == (str(rank), expected, expected)
    assert BANNER not in result.stderr


def test_local_ranks_filter_shows_one_rank_and_tee_writes_every_rank_to_the_log_dir(probed):
    result, files = probed
    assert [l for l in result.stdout.splitlines() if "PROBE" in l] == [l for l in result.stdout.splitlines()
                                                                       if "PROBE 1 " in l]
    assert len([l for l in result.stdout.splitlines() if "PROBE" in l]) == 1
    assert probe_line(files[0])[0] == "0" and probe_line(files[1])[0] == "1"


def test_a_module_runs_with_its_arguments_and_options_after_the_separator_reach_torchrun(probed):
    _, files = probed
    for text in files.values():
        _, _, _, role, argv = probe_line(text)
        assert role == "trainer"  # torch.distributed.run --role, given after `--`
        assert argv == "['a', '--b']"


def test_no_python_runs_an_executable_and_a_users_omp_setting_is_kept(tmp_path):
    script = tmp_path / "probe.sh"
    script.write_text('#!/bin/sh\necho "SH $RANK $WORLD_SIZE $OMP_NUM_THREADS $*"\n')
    script.chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "3"}
    result = fabric_run("--devices", "2", "--no-python", "./probe.sh", "x", "y", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(l for l in result.stdout.splitlines() if l.startswith("SH")) == ["SH 0 2 3 x y", "SH 1 2 3 x y"]
    assert BANNER not in result.stderr


def test_an_elastic_job_of_one_to_two_nodes_meets_at_the_c10d_endpoint(tmp_path):
    """Two fabric-run agents on this host, --num-nodes 1:2 with a c10d rendezvous: one world of 2, all_reduce works."""
    (tmp_path / "train.py").write_text(textwrap.dedent(
        """
        import os
        import torch
        from fabric_lite import Fabric
        fabric = Fabric(accelerator="cpu")
        fabric.launch()
        total = fabric.all_reduce(torch.tensor(float(fabric.global_rank + 1)), reduce_op="sum")
        print("ELASTIC", fabric.global_rank, fabric.world_size, os.environ["GROUP_RANK"], int(total),
              fabric.plan.cluster_environment, flush=True)
        """
    ))
    port = find_free_port()
    command = [sys.executable, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "1", "--nnodes", "1:2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "train.py"]
    agents = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=240) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    lines = sorted(line for out, _ in outputs for line in out.splitlines() if line.startswith("ELASTIC"))
    # rank, world size, node (group) rank, 1 + 2 summed over the two nodes, the environment fabric_lite detected
    assert lines == ["ELASTIC 0 2 0 3 torchelastic", "ELASTIC 1 2 1 3 torchelastic"]


# ---------------------------------------------------------------- what is handed over, and what is refused (no processes)
def test_dry_run_of_an_elastic_job_shows_the_rendezvous_and_leaves_sizes_to_torchrun(tmp_path):
    code, out, err = call("--devices", "2", "--num-nodes", "1:4", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                          "10.0.0.1:29400", "--rdzv-id", "job7", "--dry-run", "train.py")
    assert code == 0, err
    command = out.split("Command:")[1]
    assert ("--nproc-per-node=2 --nnodes=1:4 --rdzv-backend=c10d --rdzv-endpoint=10.0.0.1:29400 --rdzv-id=job7 "
            "--max-restarts=0") in command
    assert "--master-port" not in command and "--node-rank" not in command
    # the world size is known after the rendezvous only: devices/num_nodes come from torchrun's variables
    assert "FABRIC_LITE_DEVICES" not in command and "FABRIC_LITE_NUM_NODES" not in command


def test_dry_run_shows_per_rank_output_options_and_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code, out, err = call("--devices", "2", "--local_ranks_filter=0", "--tee", "3", "--log-dir", "logs",
                          "--", "--monitor-interval", "0.5", "--standalone", "train.py", "--lr", "1")
    assert code == 2 and "Command:" not in out  # without --dry-run the missing script is refused
    assert "the script 'train.py' does not exist" in err
    code, out, err = call("--devices", "2", "--local_ranks_filter=0", "--tee", "3", "--log-dir", "logs", "--dry-run",
                          "--", "--monitor-interval", "0.5", "--standalone", "train.py", "--lr", "1")
    assert code == 0, err
    command = out.split("Command:")[1]
    assert f"OMP_NUM_THREADS={max(1, cores() // 2)} " in command
    assert "--local-ranks-filter=0 --tee=3 --log-dir=logs " in command
    # torch.distributed.run's own options after ours (in its parser's order), then the script and its arguments
    passed = command.split("--log-dir=logs ")[1].split()
    assert sorted(passed[:2]) == ["--monitor-interval=0.5", "--standalone"] and passed[2:] == ["train.py", "--lr", "1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--devices", "2", "--", "--nproc-per-node", "4", "train.py"],
         "fabric-run: --nproc-per-node after `--` would override what fabric-run derives from its own flags. "
         "Fix: give --devices before the `--`"),
        (["--", "--master-port=29500", "--nnodes", "2", "train.py"],
         "fabric-run: --master-port, --nnodes after `--` would override what fabric-run derives from its own flags. "
         "Fix: give --main-port, --num-nodes before the `--`"),
        (["--tee", "3", "--", "--tee", "1", "train.py"],
         "fabric-run: --tee is given both before and after `--`. Fix: give it once"),
        (["--num-nodes", "1:2", "train.py"],
         "fabric-run: --num-nodes 1:2 is an elastic range, but the static rendezvous (the default) needs a fixed "
         "number of machines. Fix: add --rdzv-backend c10d --rdzv-endpoint HOST:PORT"),
        (["--nnodes", "1:2", "--rdzv-backend", "c10d", "train.py"],
         "fabric-run: --rdzv-backend c10d needs --rdzv-endpoint HOST:PORT"),
        (["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "train.py"],
         "fabric-run: --rdzv-endpoint 127.0.0.1:0 does not end in a TCP port (ports run from 1 to 65535; 0 would give "
         "every node a different one). Fix: --rdzv-endpoint 127.0.0.1:29400."),
        (["--rdzv-backend", "c10d", "--rdzv-endpoint", "h:29400", "--node-rank", "1", "train.py"],
         "fabric-run: --node-rank 1 is not used with --rdzv-backend c10d: the rendezvous numbers the nodes"),
        (["--rdzv-endpoint", "h:29400", "train.py"],
         "fabric-run: --rdzv-endpoint h:29400 is only read by a rendezvous backend such as c10d"),
        (["--devices", "2", "--monitor-interval", "1", "train.py"],
         "fabric-run: --monitor-interval is not an option of fabric-run but of torch.distributed.run. Fix: put it "
         "between `--` and the script: fabric-run [options] -- --monitor-interval ... script.py"),
        (["--devcies", "2", "train.py"],
         "fabric-run: --devcies is not an option of fabric-run. Fix: check the spelling in fabric-run --help."),
        (["--no-python", "no-such-program-here", "x"],
         "fabric-run: --no-python no-such-program-here: no such executable (neither a file nor a command on PATH)."),
    ],
)
def test_options_that_cannot_work_are_refused_naming_them(argv, message):
    code, out, err = call(*argv)
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err and out == ""


def test_options_of_newer_torch_are_passed_only_where_torchrun_has_them():
    import torch.distributed.run as torchrun

    from fabric_lite.cli.torchrun import knows_option

    assert knows_option("--max-restarts") and not knows_option("--no-such-torchrun-option")
    has_signals = "--signals-to-handle" in torchrun.get_args_parser().format_help()
    assert knows_option("--signals-to-handle") == has_signals
    code, out, _ = call("--devices", "1", "--dry-run", "train.py")
    assert code == 0 and ("--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in out) == has_signals
