"""fabric-run: flags, --dry-run, hand-over to the script through torch.distributed.run, and its errors."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch

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


def in_process(*args):
    """fabric_lite.cli.main in this process, for refusals that start nothing (no interpreter start-up per case)."""
    from fabric_lite.cli import main

    code, out, err = call(main, *args)
    return subprocess.CompletedProcess(list(args), code, out, err)


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
    assert "fabric-run: --precision 17-mixed is not a known precision. Choose one of: 32-true, 64-true," in result.stderr
    assert "FABRIC_LITE_" not in result.stderr and "RESULT" not in result.stdout


def test_missing_script_is_reported(tmp_path):
    result = in_process(str(tmp_path / "nope.py"))
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
    result = in_process("--num-nodes", "2", "--node-rank", "2", script.as_posix())
    assert result.returncode == 2
    assert "fabric-run: --node-rank 2 does not exist with --num-nodes 2 (node ranks are 0 to 1)." in result.stderr


def test_main_port_in_use_is_refused(script):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = in_process("--main-port", str(port), script.as_posix())
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
    result = in_process(*flags, script.as_posix())
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "RESULT" not in result.stdout


# ---------------------------------------------------------------- errors name the flag; --help and errors list choices
def call(entry, *argv: str) -> tuple[int, str, str]:
    """Run an entry point (fabric_lite.cli.main or fabric_main) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = entry(list(argv))
        except SystemExit as exit_:  # argparse: --help, or an option it cannot read
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def registry_choices(kind: str) -> list[str]:
    from fabric_lite.registry import ACCELERATORS, PRECISIONS, STRATEGIES

    return {"accelerator": ["auto", "gpu", *ACCELERATORS.names()], "strategy": ["auto", *STRATEGIES.names()],
            "precision": PRECISIONS.names()}[kind]


@pytest.mark.parametrize(("kind", "value"), [("accelerator", "gpux"), ("strategy", "fancy"), ("precision", "17-mixed")])
def test_an_unknown_choice_names_the_flag_and_lists_the_registry(kind, value, script):
    from fabric_lite.cli import fabric_main, main

    code, _, err = call(main, f"--{kind}", value, str(script))
    listed = ", ".join(registry_choices(kind))
    assert code == 2
    assert err == f"fabric-run: --{kind} {value} is not a known {kind}. Choose one of: {listed}.\n"
    code, _, err = call(fabric_main, "run", f"--{kind}={value}", str(script))  # Lightning's spelling, same message
    assert code == 2 and err == f"fabric run: --{kind} {value} is not a known {kind}. Choose one of: {listed}.\n"


def test_help_lists_the_same_choices_as_the_errors():
    from fabric_lite.cli import main

    code, out, _ = call(main, "--help")
    text = " ".join(out.split())  # argparse wraps the lines
    assert code == 0
    for kind in ("accelerator", "strategy", "precision"):
        assert "one of: " + ", ".join(registry_choices(kind)) in text, kind


def test_aliases_of_the_registry_are_accepted(script):
    from fabric_lite.cli import main

    code, out, err = call(main, "--accelerator", "CPU", "--precision", "bf16", "--strategy", "DDP", "--devices", "2",
                          "--dry-run", str(script))
    assert code == 0, err
    assert "precision            bf16-mixed" in out and "strategy             ddp" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "0"], "fabric-run: --devices 0 asks for no device at all. Fix: --devices 1 (or more), or 'auto'."),
        (["--devices", "many"], "fabric-run: --devices many is not a device count or a list of device indices."),
        (["--num-nodes", "0"], "fabric-run: --num-nodes 0 is not a number of machines. Choose one of: a positive count "
                               "such as 2, or MIN:MAX such as 1:4 for an elastic job"),
        (["--num_nodes", "3:2"], "fabric-run: --num-nodes 3:2 is not a number of machines."),
        (["--collective-timeout", "soon"], "fabric-run: --collective-timeout soon is not a positive number of seconds. "
                                           "Fix: --collective-timeout 300"),
        (["--max-restarts", "two"], "fabric-run: --max-restarts two is not a whole number"),
    ],
)
def test_a_bad_value_names_the_flag_not_the_variable(flags, message, script):
    from fabric_lite.cli import main

    code, _, err = call(main, *flags, str(script))
    assert code == 2
    assert message in err and "FABRIC_LITE_" not in err and "Traceback" not in err


# ---------------------------------------------------------------- `fabric run` / `fabric consolidate` (Lightning's commands)
def test_fabric_run_takes_lightnings_option_spellings(script):
    from fabric_lite.cli import fabric_main

    code, out, err = call(fabric_main, "run", "--accelerator=cpu", "--strategy=ddp", "--devices=2", "--num_nodes=1",
                          "--node_rank=0", "--main_address=127.0.0.1", "--main_port=29513", "--precision=bf16-mixed",
                          "--dry-run", str(script), "--epochs", "3")
    assert code == 0, err
    assert "strategy             ddp" in out and "precision            bf16-mixed" in out
    command = out.split("Command:")[1]
    assert ("--nproc-per-node=2 --nnodes=1 --node-rank=0 --master-addr=127.0.0.1 --master-port=29513" in command
            and command.rstrip().endswith(f"{script} --epochs 3"))
    assert "FABRIC_LITE_ACCELERATOR=cpu" in command and "FABRIC_LITE_STRATEGY=ddp" in command


def test_fabric_without_a_known_command_lists_the_commands():
    from fabric_lite.cli import fabric_main

    assert call(fabric_main, "--help")[:2] == (0, call(fabric_main)[2])  # the usage: on stdout when asked for
    code, _, err = call(fabric_main)
    assert code == 2 and err.startswith("usage: fabric run [options] script.py")
    code, _, err = call(fabric_main, "train.py")
    assert code == 2
    assert err == ("fabric: 'train.py' is not a command. Choose one of: run, consolidate. "
                   "Fix: fabric run [options] script.py, or fabric --help.\n")


def test_fabric_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "fabric")
    result = subprocess.run([exe, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: fabric run [options] script.py")


def test_consolidate_takes_lightnings_output_file_and_default(tmp_path):
    """A real sharded (FSDP) folder, merged by `fabric consolidate` with --output_file and with Lightning's default."""
    from fabric_lite.cli import fabric_main, main

    maker = tmp_path / "save.py"
    maker.write_text(textwrap.dedent(
        """
        import sys, torch
        from fabric_lite import Fabric
        fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=1)
        fabric.launch()
        torch.manual_seed(0)
        model = fabric.setup_module(torch.nn.Linear(4, 2))
        fabric.save(sys.argv[1], {"model": model, "step": 3})
        """
    ))
    folder = tmp_path / "step-3"
    made = subprocess.run([sys.executable, str(maker), str(folder)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    code, out, err = call(fabric_main, "consolidate", str(folder), "--output_file", str(tmp_path / "out.ckpt"))
    assert code == 0, err
    assert out == f"fabric: wrote {tmp_path / 'out.ckpt'}\n"
    merged = torch.load(tmp_path / "out.ckpt", weights_only=True)
    torch.manual_seed(0)
    assert merged["step"] == 3 and torch.equal(merged["model"]["weight"], torch.nn.Linear(4, 2).weight.detach())
    code, out, err = call(main, "consolidate", str(folder))  # no output named: next to the folder, as Lightning does
    assert code == 0, err
    assert torch.equal(torch.load(tmp_path / "step-3.consolidated", weights_only=True)["model"]["weight"],
                       merged["model"]["weight"])
    code, _, err = call(fabric_main, "consolidate", str(tmp_path / "absent"), "--output_file", str(tmp_path / "x"))
    assert code == 2 and err.startswith("fabric: ") and "absent" in err
