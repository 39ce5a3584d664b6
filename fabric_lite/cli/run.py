"""``fabric-run`` and ``fabric run``: start a training script on N processes (and M machines) through torch.distributed.run.

fabric-run resolves the Plan first (so a bad flag fails before any process starts), hands the Fabric settings to the
script through the ``FABRIC_LITE_*`` variables (read by ``Fabric(...)`` in the script), and delegates process
management to ``torch.distributed.run`` (torchrun): rendezvous, per-rank environment, failure handling and restarts are
torch's own. ``Fabric.launch()`` in the script is then a no-op.

This module is the entry point; the parts live beside it: options.py (the option table, the parser and its help,
the split of the command line), command_line.py (the command line as one checked namespace), handover.py (the
FABRIC_LITE_* variables and the torch.distributed.run arguments) and torchrun.py (the options after ``--``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence

from fabric_lite.cli.command_line import parse
from fabric_lite.cli.handover import handover_env, name_the_flags, torchrun_argv
from fabric_lite.cli.options import (
    DEFAULT_MULTI_NODE_PORT,
    DESCRIPTION,
    EXAMPLES,
    OPTIONS,
    USAGE,
    Option,
    build_parser,
    choices,
    split_command_line,
)
from fabric_lite.cli.torchrun import threads_per_rank
from fabric_lite.errors import ConfigurationError, FabricLiteError
from fabric_lite.plan import HANDOVER, resolve
from fabric_lite.utilities.distributed import find_free_port, port_in_use

# The names this module has always offered, kept importable from here after the split.
__all__ = [
    "DEFAULT_MULTI_NODE_PORT",
    "DESCRIPTION",
    "EXAMPLES",
    "OPTIONS",
    "USAGE",
    "Option",
    "build_parser",
    "choices",
    "handover_env",
    "name_the_flags",
    "parse",
    "run",
    "split_command_line",
    "torchrun_argv",
]


def _check_script(args: argparse.Namespace) -> None:
    if args.module:
        return  # found (or not) by python -m in each worker
    if args.no_python:
        found = os.path.isfile(args.script) if os.sep in args.script else shutil.which(args.script) is not None
        if not found:
            raise ConfigurationError(
                f"--no-python {args.script}: no such executable (neither a file nor a command on PATH). "
                f"Fix: check the path, or leave --no-python out for a Python script."
            )
        return
    if not os.path.isfile(args.script):
        raise ConfigurationError(f"the script {args.script!r} does not exist. Fix: check the path.")


def run(argv: Sequence[str], prog: str = "fabric-run") -> int:
    """Run the command line ``argv`` (without the program name); returns the exit code."""
    try:
        args = parse(argv, prog)
    except FabricLiteError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    handover = handover_env(args)
    port = None
    if args.rdzv_backend == "static":
        port = args.main_port or (find_free_port() if args.max_nodes == 1 else DEFAULT_MULTI_NODE_PORT)
        if args.main_port and args.node_rank == 0 and not args.dry_run and port_in_use(args.main_address, port):
            print(f"{prog}: --main-port {port} is already in use on {args.main_address}, so the processes cannot "
                  f"meet there. Fix: choose a free port, or leave --main-port out on one machine.", file=sys.stderr)
            return 2
    checked = {**handover, HANDOVER["devices"]: str(args.devices)}  # an elastic job still has a count per node
    try:
        plan = resolve(env=checked)  # fails here, before any process starts, on a bad flag
    except FabricLiteError as error:
        print(f"{prog}: {name_the_flags(str(error), checked)}", file=sys.stderr)
        return 2
    nproc = plan.num_devices
    settings = dict(handover)
    if "OMP_NUM_THREADS" not in os.environ:  # torch.distributed.run would set 1 and print a banner about it
        settings["OMP_NUM_THREADS"] = str(threads_per_rank(nproc))
    command = torchrun_argv(args, nproc, port)
    if args.dry_run:
        return _dry_run(args, settings, command, nproc, port, prog)
    try:
        _check_script(args)
    except FabricLiteError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    os.environ.update(settings)
    return _torchrun(command, prog)


def _dry_run(args: argparse.Namespace, settings: dict[str, str], command: list[str], nproc: int, port: int | None,
             prog: str) -> int:
    child_env = {
        **settings, "TORCHELASTIC_RUN_ID": "dry-run", "RANK": "0", "LOCAL_RANK": "0",
        "GROUP_RANK": str(args.node_rank or 0), "WORLD_SIZE": str(nproc * args.max_nodes),
        "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": args.main_address or "127.0.0.1", "MASTER_PORT": str(port or 0),
    }
    try:
        child_plan = resolve(env=child_env)
    except FabricLiteError as error:
        print(f"{prog}: {name_the_flags(str(error), settings)}", file=sys.stderr)
        return 2
    print("Plan (as each process will resolve it" + (", with the most nodes" if args.elastic else "") + "):")
    print(child_plan.table())
    print()
    print("Command:")
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(settings.items()))
    print(f"{assignments} {shlex.quote(sys.executable)} -m torch.distributed.run {shlex.join(command)}")
    return 0


def _torchrun(command: list[str], prog: str) -> int:
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(command)
    except SystemExit as exit_:  # torchrun exits with the failing worker's code
        return int(exit_.code or 0)
    except Exception as error:
        if type(error).__name__ == "SignalException":  # the workers got the signal too and have ended
            number = int(getattr(error, "sigval", 0))
            print(f"{prog}: stopped by {signal.Signals(number).name}; the workers were sent the same signal.",
                  file=sys.stderr, flush=True)
            return 128 + number
        if type(error).__name__ != "ChildFailedError":
            raise
        # torch's own report: the first observed failure (rank, host, exit code or signal, traceback) first.
        print(error.format_msg() if hasattr(error, "format_msg") else str(error), file=sys.stderr, flush=True)
        return 1
    return 0
