"""``fabric-run`` and ``fabric run``: start a training script on N processes (and M machines) through torch.distributed.run.

fabric-run resolves the Plan first (so a bad flag fails before any process starts), hands the Fabric settings to the
script through the ``FABRIC_LITE_*`` variables (read by ``Fabric(...)`` in the script), and delegates process
management to ``torch.distributed.run`` (torchrun): rendezvous, per-rank environment, failure handling and restarts are
torch's own. ``Fabric.launch()`` in the script is then a no-op.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fabric_lite.cli.torchrun import knows_option, parse_tail, threads_per_rank
from fabric_lite.errors import ConfigurationError, FabricLiteError, choices_error
from fabric_lite.plan import HANDOVER, resolve
from fabric_lite.plan.reliability import TIMEOUT_VARIABLE
from fabric_lite.registry import ACCELERATORS, PRECISIONS, STRATEGIES, Registry
from fabric_lite.utilities.distributed import find_free_port, port_in_use

DEFAULT_MULTI_NODE_PORT = 29400

USAGE = """%(prog)s [options] script.py [script arguments ...]
       %(prog)s [options] -m module [module arguments ...]
       %(prog)s [options] --no-python executable [arguments ...]
       %(prog)s [options] -- [torch.distributed.run options] script.py [script arguments ...]"""

DESCRIPTION = """\
Start a training script on N processes (and M machines) through torch.distributed.run.

The options before the script are this command's; everything after the script goes to the script. Any other
torch.distributed.run option goes between a `--` and the script. Fabric() in the script reads --accelerator,
--strategy, --devices, --num-nodes and --precision; an argument given to Fabric(...) that disagrees is an error.
Each rank gets OMP_NUM_THREADS = CPU cores // processes per node (at least 1) unless OMP_NUM_THREADS is set."""

EXAMPLES = """\
Examples:
  {prog} --devices 2 train.py --epochs 3          # 2 processes on this machine (gloo on CPU)
  {prog} --accelerator=cuda --devices=8 --precision=bf16-mixed train.py
  {prog} --num-nodes 2 --node-rank 0 --main-address 10.0.0.1 --devices 8 train.py   # on node 0
  {prog} --num-nodes 1:4 --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29400 --devices 8 train.py  # elastic
  {prog} --devices 2 -m mypackage.train --lr 0.1    # run a module, as python -m does
  {prog} --devices 2 --local-ranks-filter 0 --tee 3 --log-dir logs train.py   # rank 0 on screen, all in logs/
  {prog} --devices 2 -- --monitor-interval 1 --start-method forkserver train.py   # more torch.distributed.run options
  {prog} --devices 4 --dry-run train.py           # print the plan and the torchrun command only
  {consolidate} checkpoints/step-100 --output_file step-100.ckpt"""

# The names each choice flag accepts (besides the registry's aliases such as 'bf16' or 'tpu'), read from the registry.
_CHOICES: dict[str, tuple[Registry, tuple[str, ...]]] = {
    "accelerator": (ACCELERATORS, ("auto", "gpu")),
    "strategy": (STRATEGIES, ("auto",)),
    "precision": (PRECISIONS, ()),
}


def choices(kind: str) -> list[str]:
    """The valid values of ``--accelerator``, ``--strategy`` or ``--precision``, as ``--help`` and errors list them."""
    registry, extra = _CHOICES[kind]
    return [*extra, *registry.names()]


def _check_choice(kind: str, value: str | None) -> None:
    if value is None:
        return
    registry, extra = _CHOICES[kind]
    if value.strip().lower() not in extra and registry.canonical(value) is None:
        raise choices_error(f"--{kind} {value}", kind, choices(kind))


@dataclass(frozen=True)
class Option:
    """One command-line option: its spellings (the dashed ones, each also accepted with underscores)."""

    names: tuple[str, ...]
    group: str
    help: str
    flag: bool = False  # takes no value
    default: Any = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        long = next(name for name in self.names if name.startswith("--"))
        return long[2:].replace("-", "_")

    @property
    def spellings(self) -> list[str]:
        spelled = list(self.names)
        for name in self.names:
            if name.startswith("--") and "-" in name[2:]:
                spelled.append("--" + name[2:].replace("-", "_"))
        return spelled


_FABRIC, _PROCESSES, _OUTPUT, _OTHER = (
    "Fabric settings (read by Fabric() in the script)",
    "processes (torch.distributed.run)",
    "per-rank output (torch.distributed.run)",
    "other",
)


def _options() -> list[Option]:
    listed = {kind: ", ".join(choices(kind)) for kind in _CHOICES}
    return [
        Option(("--accelerator",), _FABRIC, f"one of: {listed['accelerator']} (default: auto)"),
        Option(("--strategy",), _FABRIC, f"one of: {listed['strategy']} (default: auto)"),
        Option(("--devices",), _FABRIC, "processes per machine: a count, -1, or GPU indices '0,1' (default: 1)",
               default="1"),
        Option(("--num-nodes", "--nnodes"), _FABRIC,
               "machines, or MIN:MAX for an elastic job (with --rdzv-backend c10d) (default: 1)", default="1",
               metavar="N|MIN:MAX"),
        Option(("--precision",), _FABRIC, f"one of: {listed['precision']} (default: the strategy's, 32-true)"),
        Option(("--collective-timeout",), _FABRIC,
               "seconds a collective may wait for the other ranks before the job fails with every rank's stack "
               "(default: the strategy's, 30 minutes)", metavar="SECONDS"),
        Option(("--node-rank",), _PROCESSES, "this machine's index, 0 to num-nodes - 1 (default: 0)", metavar="R"),
        Option(("--main-address",), _PROCESSES, "address of node 0 (default: 127.0.0.1)", metavar="HOST"),
        Option(("--main-port",), _PROCESSES,
               f"port on node 0 (default: a free port on one machine, {DEFAULT_MULTI_NODE_PORT} on several)",
               metavar="PORT"),
        Option(("--max-restarts",), _PROCESSES,
               "restart all workers up to K times when one fails (default: 0)", default="0", metavar="K"),
        Option(("-m", "--module"), _PROCESSES, "the script is a module name, run as python -m does", flag=True),
        Option(("--no-python",), _PROCESSES, "run the script as an executable, without python in front", flag=True),
        Option(("--rdzv-backend",), _PROCESSES,
               "static (default: --main-address/--main-port, fixed --num-nodes) or c10d (nodes meet at "
               "--rdzv-endpoint; needed for a MIN:MAX range)", metavar="BACKEND"),
        Option(("--rdzv-endpoint",), _PROCESSES, "HOST:PORT where the nodes meet (same on every node)",
               metavar="HOST:PORT"),
        Option(("--rdzv-id",), _PROCESSES, "a job id, the same on every node of one job", metavar="ID"),
        Option(("--local-ranks-filter",), _OUTPUT, "show only these local ranks' output on screen, e.g. 0 or 0,1",
               metavar="RANKS"),
        Option(("--tee",), _OUTPUT, "copy output to files in --log-dir and to the screen: 1 stdout, 2 stderr, 3 both "
               "(or per rank: 0:3,1:1)", metavar="STREAMS"),
        Option(("--redirects",), _OUTPUT, "send output to files in --log-dir instead of the screen (same format as "
               "--tee)", metavar="STREAMS"),
        Option(("--log-dir",), _OUTPUT, "folder for the per-rank log files of --tee/--redirects", metavar="DIR"),
        Option(("--dry-run",), _OTHER, "print the resolved plan and the command, start nothing", flag=True),
    ]


OPTIONS = _options()


def build_parser(prog: str = "fabric-run") -> argparse.ArgumentParser:
    """The parser of the options before the script (the script and what follows are split off first)."""
    consolidate = prog.replace("run", "consolidate") if prog.endswith(" run") else f"{prog} consolidate"
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EXAMPLES.format(prog=prog, consolidate=consolidate),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # the script's options must never be taken for abbreviations of ours
    )
    groups: dict[str, Any] = {}
    for option in OPTIONS:
        group = groups.get(option.group) or groups.setdefault(option.group, parser.add_argument_group(option.group))
        if option.flag:
            group.add_argument(*option.spellings, dest=option.dest, action="store_true", help=option.help)
        else:
            group.add_argument(*option.spellings, dest=option.dest, default=option.default, help=option.help,
                               metavar=option.metavar)
    return parser


def _takes_value() -> dict[str, bool]:
    """Each spelling of our options (and -h/--help) -> whether the next argument is its value."""
    return {"-h": False, "--help": False, **{name: not option.flag for option in OPTIONS for name in option.spellings}}


def split_command_line(argv: Sequence[str]) -> tuple[list[str], list[str] | None, str | None, list[str]]:
    """(our options, the torch.distributed.run part after ``--`` or None, the script, the script's arguments)."""
    takes_value = _takes_value()
    argv = list(argv)
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            return argv[:index], argv[index + 1:], None, []
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            index += 2 if takes_value.get(name, False) and "=" not in token else 1
            continue
        return argv[:index], None, token, argv[index + 1:]
    return argv, None, None, []


def _refuse_unknown_options(ours: list[str], prog: str) -> None:
    """An option that is not ours: say where a torch.distributed.run option goes, else point at --help."""
    takes_value = _takes_value()
    index = 0
    while index < len(ours):
        name = ours[index].split("=", 1)[0]
        if name not in takes_value:
            if knows_option(name):
                raise ConfigurationError(
                    f"{name} is not an option of {prog} but of torch.distributed.run. Fix: put it between `--` and "
                    f"the script: {prog} [options] -- {name} ... script.py"
                )
            raise ConfigurationError(f"{name} is not an option of {prog}. Fix: check the spelling in {prog} --help.")
        index += 2 if takes_value[name] and "=" not in ours[index] else 1


def parse(argv: Sequence[str], prog: str) -> argparse.Namespace:
    """The command line as one namespace; flags that cannot work raise ConfigurationError naming the flag."""
    ours, tail, script, script_args = split_command_line(argv)
    _refuse_unknown_options(ours, prog)
    parser = build_parser(prog)
    args = parser.parse_args(ours)  # --help, or an option without its value: argparse's message, exit 2
    args.torchrun_options = []
    if tail is not None:
        parsed = parse_tail(tail, prog)
        script, script_args, args.torchrun_options = parsed.script, parsed.script_args, parsed.options
        for name, value in parsed.shared.items():
            if getattr(args, name) not in (None, False):
                flag = "--" + name.replace("_", "-")
                raise ConfigurationError(
                    f"{flag} is given both before and after `--`. Fix: give it once (before the `--`)."
                )
            setattr(args, name, value)
    if script is None:
        parser.error("the following arguments are required: script")
    args.script, args.script_args = script, list(script_args)
    _validate(args)
    return args


def _positive_int(flag: str, value: str, *, allow_zero: bool = False, fix: str) -> int:
    text = str(value).strip()
    number = int(text) if re.fullmatch(r"-?\d+", text) else None
    if number is None or number < (0 if allow_zero else 1):
        raise ConfigurationError(f"{flag} {value} is not a {'non-negative' if allow_zero else 'positive'} "
                                 f"whole number. Fix: {fix}")
    return number


def _validate(args: argparse.Namespace) -> None:
    for kind in _CHOICES:
        _check_choice(kind, getattr(args, kind))
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", str(args.num_nodes))
    low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
    if low < 1 or high < low:
        raise ConfigurationError(
            f"--num-nodes {args.num_nodes} is not a number of machines. Choose one of: a positive count such as 2, or "
            f"MIN:MAX such as 1:4 for an elastic job (with --rdzv-backend c10d). Fix: --num-nodes 1 for one machine."
        )
    args.min_nodes, args.max_nodes = low, high
    args.elastic = low != high
    text = str(args.max_restarts).strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ConfigurationError(f"--max-restarts {args.max_restarts} is not a whole number; it counts how often the "
                                 f"workers are restarted after a failure. Fix: --max-restarts 0 (never, the default) "
                                 f"or a positive count.")
    args.max_restarts = int(text)
    if args.max_restarts < 0:
        raise ConfigurationError(f"--max-restarts {args.max_restarts} is negative; it counts how often the workers are "
                                 f"restarted after a failure. Fix: --max-restarts 0 (never, the default) or a positive "
                                 f"count.")
    if args.collective_timeout is not None:
        try:
            seconds = float(args.collective_timeout)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ConfigurationError(
                f"--collective-timeout {args.collective_timeout} is not a positive number of seconds. "
                f"Fix: --collective-timeout 300, or leave it out for the strategy's default (30 minutes)."
            )
    backend = (args.rdzv_backend or "static").strip().lower()
    args.rdzv_backend = backend
    if backend == "static":
        _validate_static(args)
    else:
        _validate_rendezvous(args)


def _validate_static(args: argparse.Namespace) -> None:
    if args.elastic:
        raise ConfigurationError(
            f"--num-nodes {args.num_nodes} is an elastic range, but the static rendezvous (the default) needs a fixed "
            f"number of machines. Fix: add --rdzv-backend c10d --rdzv-endpoint HOST:PORT (the same on every node), "
            f"or give one number such as --num-nodes {args.max_nodes}."
        )
    for name in ("rdzv_endpoint", "rdzv_id"):
        if getattr(args, name) is not None:
            raise ConfigurationError(
                f"--{name.replace('_', '-')} {getattr(args, name)} is only read by a rendezvous backend such as c10d; "
                f"the static rendezvous (the default) meets at --main-address/--main-port. Fix: add --rdzv-backend "
                f"c10d, or leave --{name.replace('_', '-')} out."
            )
    nodes = args.max_nodes
    args.node_rank = _positive_int("--node-rank", args.node_rank or "0", allow_zero=True,
                                   fix=f"give each machine a distinct rank from 0 to {nodes - 1}.")
    if args.node_rank >= nodes:
        raise ConfigurationError(
            f"--node-rank {args.node_rank} does not exist with --num-nodes {nodes} (node ranks are 0 to {nodes - 1}). "
            f"Fix: give each machine a distinct rank below {nodes}."
        )
    if args.main_port is not None:
        text = str(args.main_port).strip()
        if not re.fullmatch(r"-?\d+", text) or not 1 <= int(text) <= 65535:
            raise ConfigurationError(
                f"--main-port {args.main_port} is not a TCP port (ports run from 1 to 65535). Fix: give a free port "
                f"such as --main-port {DEFAULT_MULTI_NODE_PORT}, or leave --main-port out on one machine."
            )
        args.main_port = int(text)
    args.main_address = args.main_address or "127.0.0.1"


def _validate_rendezvous(args: argparse.Namespace) -> None:
    backend = args.rdzv_backend
    for name in ("node_rank", "main_address", "main_port"):
        if getattr(args, name) is not None:
            raise ConfigurationError(
                f"--{name.replace('_', '-')} {getattr(args, name)} is not used with --rdzv-backend {backend}: the "
                f"rendezvous numbers the nodes and picks the address of rank 0. Fix: leave --{name.replace('_', '-')} "
                f"out and give every node the same --rdzv-endpoint HOST:PORT."
            )
    endpoint = args.rdzv_endpoint
    if not endpoint:
        raise ConfigurationError(
            f"--rdzv-backend {backend} needs --rdzv-endpoint HOST:PORT, where the nodes meet (the same on every node; "
            f"one of them must be HOST). Fix: e.g. --rdzv-endpoint 127.0.0.1:{DEFAULT_MULTI_NODE_PORT} on one machine."
        )
    host, _, port = str(endpoint).rpartition(":")
    if host and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigurationError(
            f"--rdzv-endpoint {endpoint} does not end in a TCP port (ports run from 1 to 65535; 0 would give every "
            f"node a different one). Fix: --rdzv-endpoint {host}:{DEFAULT_MULTI_NODE_PORT}."
        )


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
