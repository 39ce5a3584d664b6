"""fabric-run: start a training script on N processes (and M machines) through torch.distributed.run.

Usage::

    fabric-run [--accelerator A] [--strategy S] [--devices N] [--num-nodes M] [--node-rank R]
               [--main-address HOST] [--main-port PORT] [--precision P] [--max-restarts K]
               [--collective-timeout SECONDS] [--dry-run] script.py [script arguments ...]
    fabric-run consolidate CHECKPOINT_DIR --output FILE

The flags are those of Lightning's ``fabric run``. fabric-run resolves the Plan first (so a bad
flag fails before any process starts), hands the settings to the script through the
``FABRIC_LITE_*`` variables (read by ``Fabric(...)`` in the script), and delegates process
management to ``torch.distributed.run`` (torchrun): rendezvous, per-rank environment, failure
handling and restarts are torch's own. ``Fabric.launch()`` in the script is then a no-op.

``fabric-run consolidate`` merges a sharded checkpoint folder (``strategy="fsdp"``, or a DeepSpeed
strategy's folder through DeepSpeed's own zero_to_fp32) into one file
that ``torch.load`` reads and that loads into a model on any strategy or none.

Examples::

    fabric-run --devices 2 train.py --epochs 3          # 2 processes on this machine (gloo on CPU)
    fabric-run --accelerator cuda --devices 8 --precision bf16-mixed train.py
    fabric-run --num-nodes 2 --node-rank 0 --main-address 10.0.0.1 --devices 8 train.py   # on node 0
    fabric-run --devices 4 --dry-run train.py           # print the plan and the torchrun command only
    fabric-run consolidate checkpoints/step-100 --output step-100.ckpt
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence

from fabric_lite.errors import FabricLiteError
from fabric_lite.plan import HANDOVER, resolve
from fabric_lite.plan.reliability import TIMEOUT_VARIABLE
from fabric_lite.utilities.distributed import find_free_port, port_in_use

_DEFAULT_MULTI_NODE_PORT = 29400


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabric-run",
        description=__doc__.split("Usage::")[0].strip(),
        epilog="Examples:\n" + __doc__.split("Examples::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--accelerator", default=None, help="cpu, cuda, gpu, mps, tpu or auto (default: auto)")
    parser.add_argument("--strategy", default=None, help="the strategy name, e.g. ddp (default: auto)")
    parser.add_argument("--devices", default="1", help="processes per machine: a count, -1, or GPU indices '0,1' (default: 1)")
    parser.add_argument("--num-nodes", "--num_nodes", dest="num_nodes", type=int, default=1, help="machines (default: 1)")
    parser.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0, help="this machine's index")
    parser.add_argument("--main-address", "--main_address", dest="main_address", default="127.0.0.1",
                        help="address of node 0 (default: 127.0.0.1)")
    parser.add_argument("--main-port", "--main_port", dest="main_port", type=int, default=None,
                        help=f"port on node 0 (default: a free port on one machine, {_DEFAULT_MULTI_NODE_PORT} on several)")
    parser.add_argument("--precision", default=None, help="32-true, 64-true, 16-mixed, bf16-mixed, 16-true, bf16-true, ...")
    parser.add_argument("--max-restarts", dest="max_restarts", type=int, default=0,
                        help="restart all workers up to K times when one fails (torch.distributed.run --max-restarts)")
    parser.add_argument("--collective-timeout", dest="collective_timeout", default=None, metavar="SECONDS",
                        help="seconds a collective may wait for the other ranks before the job fails with every "
                             "rank's stack (default: the strategy's, 30 minutes)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan and the command, start nothing")
    parser.add_argument("script", help="the training script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    return parser


def handover_env(args: argparse.Namespace) -> dict[str, str]:
    """The FABRIC_LITE_* variables the script's Fabric(...) will read."""
    values = {
        "accelerator": args.accelerator,
        "strategy": args.strategy,
        "devices": args.devices,
        "num_nodes": str(args.num_nodes),
        "precision": args.precision,
    }
    return {HANDOVER[name]: value for name, value in values.items() if value is not None}


def torchrun_argv(args: argparse.Namespace, nproc_per_node: int, port: int) -> list[str]:
    argv = [
        f"--nproc-per-node={nproc_per_node}",
        f"--nnodes={args.num_nodes}",
        f"--node-rank={args.node_rank}",
        f"--master-addr={args.main_address}",
        f"--master-port={port}",
        f"--max-restarts={args.max_restarts}",
        # torchrun passes these on to the workers and waits for them (the Preemption plugin saves, then exits).
        # SIGUSR1, SLURM's usual early warning, is not among torch's defaults: it would kill torchrun and leave
        # the workers (in sessions of their own) behind.
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
    ]
    return [*argv, args.script, *args.script_args]


def consolidate_main(argv: Sequence[str]) -> int:
    """``fabric-run consolidate CHECKPOINT_DIR --output FILE``."""
    parser = argparse.ArgumentParser(
        prog="fabric-run consolidate", description="Merge a sharded checkpoint folder into one torch.load-able file."
    )
    parser.add_argument("checkpoint_dir", help="the folder fabric.save wrote with strategy='fsdp' or a DeepSpeed strategy")
    parser.add_argument("--output", "-o", required=True, help="the file to write")
    args = parser.parse_args(argv)
    from fabric_lite.checkpoint.sharded import consolidate
    from fabric_lite.strategies.deepspeed import consolidate_deepspeed_checkpoint, is_deepspeed_checkpoint

    merge = consolidate_deepspeed_checkpoint if is_deepspeed_checkpoint(args.checkpoint_dir) else consolidate
    try:
        written = merge(args.checkpoint_dir, args.output)
    except FabricLiteError as error:
        print(f"fabric-run: {error}", file=sys.stderr)
        return 2
    print(f"fabric-run: wrote {written}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["consolidate"]:  # a subcommand; a script named "consolidate" can be run as ./consolidate
        return consolidate_main(argv[1:])
    args = build_parser().parse_args(argv)
    handover = handover_env(args)
    if args.collective_timeout is not None:
        handover[TIMEOUT_VARIABLE] = args.collective_timeout  # checked by resolve() below
    if not 0 <= args.node_rank < max(args.num_nodes, 1):
        print(f"fabric-run: --node-rank {args.node_rank} does not exist with --num-nodes {args.num_nodes} (node ranks "
              f"are 0 to {args.num_nodes - 1}). Fix: give each machine a distinct rank below {args.num_nodes}.",
              file=sys.stderr)
        return 2
    if args.main_port is not None and not 1 <= args.main_port <= 65535:
        print(f"fabric-run: --main-port {args.main_port} is not a TCP port (ports run from 1 to 65535). Fix: give a free "
              f"port such as --main-port {_DEFAULT_MULTI_NODE_PORT}, or leave --main-port out on one machine.", file=sys.stderr)
        return 2
    if args.max_restarts < 0:
        print(f"fabric-run: --max-restarts {args.max_restarts} is negative; it counts how often the workers are "
              f"restarted after a failure. Fix: --max-restarts 0 (never, the default) or a positive count.", file=sys.stderr)
        return 2
    port = args.main_port or (find_free_port() if args.num_nodes == 1 else _DEFAULT_MULTI_NODE_PORT)
    if args.main_port and args.node_rank == 0 and not args.dry_run and port_in_use(args.main_address, port):
        print(f"fabric-run: --main-port {port} is already in use on {args.main_address}, so the processes cannot "
              f"meet there. Fix: choose a free port, or leave --main-port out on one machine.", file=sys.stderr)
        return 2
    try:
        plan = resolve(env=handover)  # fails here, before any process starts, on a bad flag
    except FabricLiteError as error:
        print(f"fabric-run: {error}", file=sys.stderr)
        return 2
    nproc = plan.num_devices
    command = torchrun_argv(args, nproc, port)
    if args.dry_run:
        child_env = {
            **handover, "TORCHELASTIC_RUN_ID": "dry-run", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": str(args.node_rank),
            "WORLD_SIZE": str(nproc * args.num_nodes), "MASTER_ADDR": args.main_address, "MASTER_PORT": str(port),
        }
        try:
            child_plan = resolve(env=child_env)
        except FabricLiteError as error:
            print(f"fabric-run: {error}", file=sys.stderr)
            return 2
        print("Plan (as each process will resolve it):")
        print(child_plan.table())
        print()
        print("Command:")
        settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(handover.items()))
        print(f"{settings} {shlex.quote(sys.executable)} -m torch.distributed.run {shlex.join(command)}")
        return 0
    if not os.path.isfile(args.script):
        print(f"fabric-run: the script {args.script!r} does not exist. Fix: check the path.", file=sys.stderr)
        return 2
    os.environ.update(handover)
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(command)
    except SystemExit as exit_:  # torchrun exits with the failing worker's code
        return int(exit_.code or 0)
    except Exception as error:
        if type(error).__name__ == "SignalException":  # the workers got the signal too and have ended
            number = int(getattr(error, "sigval", 0))
            print(f"fabric-run: stopped by {signal.Signals(number).name}; the workers were sent the same signal.",
                  file=sys.stderr, flush=True)
            return 128 + number
        if type(error).__name__ != "ChildFailedError":
            raise
        # torch's own report: the first observed failure (rank, host, exit code or signal, traceback) first.
        print(error.format_msg() if hasattr(error, "format_msg") else str(error), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
