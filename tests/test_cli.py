"""fabric-run: flags, --dry-run, hand-over to the script through torch.distributed.run, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    from fabric_lite import Fabric
    fabric = Fabric()
    fabric.launch()
    fabric.launch()  # harmless twice, and harmless under fabric-run
    p = fabric.plan
    print("RESULT", fabric.global_rank, fabric.world_size, p.precision, p.cluster_environment, p.launcher, sys.argv[1:])
    """
)


def run_cli(*args, cwd=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "fabric_lite.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


@pytest.fixture()
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def test_runs_the_script_through_torchrun_with_settings_handed_over(script):
    result = run_cli("--precision", "bf16", script.as_posix(), "--epochs", "3")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
    assert line == "RESULT 0 1 bf16-mixed torchelastic external ['--epochs', '3']"


def test_dry_run_prints_the_plan_and_command_and_starts_nothing(script, tmp_path):
    result = run_cli("--devices", "1", "--precision", "16-true", "--main-port", "29512", "--dry-run", script.as_posix())
    assert result.returncode == 0, result.stderr
    assert "Plan (as each process will resolve it):" in result.stdout
    assert "precision            16-true" in result.stdout
    assert "launcher             external" in result.stdout
    assert "-m torch.distributed.run --nproc-per-node=1 --nnodes=1 --node-rank=0 --master-addr=127.0.0.1 --master-port=29512" in result.stdout
    assert "RESULT" not in result.stdout


def test_bad_flag_fails_before_any_process_starts(script):
    result = run_cli("--precision", "17-mixed", script.as_posix())
    assert result.returncode == 2
    assert "fabric-run: FABRIC_LITE_PRECISION='17-mixed' (set by fabric-run) is not a known precision. Choose one of:" in result.stderr
    assert "RESULT" not in result.stdout


def test_missing_script_is_reported(tmp_path):
    result = run_cli(str(tmp_path / "nope.py"))
    assert result.returncode == 2
    assert f"fabric-run: the script '{tmp_path / 'nope.py'}' does not exist. Fix: check the path." in result.stderr


def test_script_failure_exit_code_is_propagated(tmp_path):
    path = tmp_path / "fail.py"
    path.write_text("raise SystemExit(3)\n")
    result = run_cli(path.as_posix())
    assert result.returncode != 0


def test_conflicting_argument_in_script_names_both_sources(tmp_path):
    path = tmp_path / "conflict.py"
    path.write_text("from fabric_lite import Fabric\nFabric(precision='64-true')\n")
    result = run_cli("--precision", "bf16-mixed", path.as_posix())
    assert result.returncode != 0
    assert "Fabric(precision='64-true') conflicts with FABRIC_LITE_PRECISION='bf16-mixed' set by fabric-run" in result.stderr


def test_help_shows_examples():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout and "fabric-run --devices 2 train.py" in result.stdout


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "fabric-run")
    assert os.path.exists(exe)
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: fabric-run" in result.stdout


def test_node_rank_outside_the_nodes_is_refused(script):
    result = run_cli("--num-nodes", "2", "--node-rank", "2", script.as_posix())
    assert result.returncode == 2
    assert "fabric-run: --node-rank 2 does not exist with --num-nodes 2 (node ranks are 0 to 1)." in result.stderr


def test_main_port_in_use_is_refused(script):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--main-port", str(port), script.as_posix())
    assert result.returncode == 2
    assert f"fabric-run: --main-port {port} is already in use on 127.0.0.1" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--main-port", "0"], "fabric-run: --main-port 0 is not a TCP port (ports run from 1 to 65535). Fix: give a free port"),
        (["--main-port", "70000"], "fabric-run: --main-port 70000 is not a TCP port (ports run from 1 to 65535)."),
        (["--main-port", "-5"], "fabric-run: --main-port -5 is not a TCP port"),
        (["--max-restarts", "-1"], "fabric-run: --max-restarts -1 is negative; it counts how often the workers are "
                                   "restarted after a failure. Fix: --max-restarts 0"),
    ],
)
def test_out_of_range_flags_are_refused_naming_the_flag(flags, message, script):
    result = run_cli(*flags, script.as_posix())
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "RESULT" not in result.stdout
