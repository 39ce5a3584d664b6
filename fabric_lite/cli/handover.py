"""What ``fabric-run`` hands over: the FABRIC_LITE_* variables for the script's Fabric(...), the arguments for
torch.distributed.run, and the plan's errors spelled back as the flags that carried the settings.
"""

from __future__ import annotations

import argparse
import re

from fabric_lite.cli.torchrun import knows_option
from fabric_lite.plan import HANDOVER
from fabric_lite.plan.reliability import TIMEOUT_VARIABLE


def handover_env(args: argparse.Namespace) -> dict[str, str]:
    """The FABRIC_LITE_* variables the script's Fabric(...) will read.

    For an elastic range the world size is known only after the rendezvous: devices and num_nodes are then left to
    torch.distributed.run's variables (WORLD_SIZE, LOCAL_WORLD_SIZE).
    """
    values = {
        "accelerator": args.accelerator,
        "strategy": args.strategy,
        "devices": None if args.elastic else args.devices,
        "num_nodes": None if args.elastic else str(args.max_nodes),
        "precision": args.precision,
    }
    handover = {HANDOVER[name]: str(value) for name, value in values.items() if value is not None}
    if args.collective_timeout is not None:
        handover[TIMEOUT_VARIABLE] = str(args.collective_timeout)
    return handover


def name_the_flags(message: str, handover: dict[str, str]) -> str:
    """Say ``--devices 0`` where the plan's error names the variable that carried the flag (``FABRIC_LITE_DEVICES='0'``)."""
    for name, variable in HANDOVER.items():
        if variable not in handover:
            continue
        flag = f"--{name.replace('_', '-')}"
        spelled = f"{variable}={handover[variable]!r} (set by fabric-run)"
        if spelled in message:
            head, fix_mark, fix = message.replace(spelled, f"{flag} {handover[variable]}").partition("Fix:")
            message = head + fix_mark + re.sub(rf"\b{name}=", f"{flag} ", fix)
    return message


def torchrun_argv(args: argparse.Namespace, nproc_per_node: int, port: int | None) -> list[str]:
    """The arguments for torch.distributed.run."""
    nodes = f"{args.min_nodes}:{args.max_nodes}" if args.elastic else str(args.max_nodes)
    argv = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nodes}"]
    if args.rdzv_backend == "static":
        argv += [f"--node-rank={args.node_rank}", f"--master-addr={args.main_address}", f"--master-port={port}"]
    else:
        argv += [f"--rdzv-backend={args.rdzv_backend}", f"--rdzv-endpoint={args.rdzv_endpoint}"]
        if args.rdzv_id is not None:
            argv.append(f"--rdzv-id={args.rdzv_id}")
    argv.append(f"--max-restarts={args.max_restarts}")
    if knows_option("--signals-to-handle"):  # torch >= 2.10; before, torchrun forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT
        # torchrun passes these on to the workers and waits for them (the Preemption plugin saves, then exits).
        # SIGUSR1, SLURM's usual early warning, is not among torch's defaults: it would kill torchrun and leave
        # the workers (in sessions of their own) behind.
        argv.append("--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    for name in ("local_ranks_filter", "tee", "redirects", "log_dir"):
        if getattr(args, name) is not None:
            argv.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    if args.module:
        argv.append("--module")
    if args.no_python:
        argv.append("--no-python")
    return [*argv, *args.torchrun_options, args.script, *args.script_args]
