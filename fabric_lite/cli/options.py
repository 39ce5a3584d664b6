"""The options of ``fabric-run`` / ``fabric run`` before the script: the option table, the parser and its help text.

Also the valid names of the choice flags (``--accelerator``, ``--strategy``, ``--precision``, read from the registry)
and the split of the command line into our options, the ``--`` part for torch.distributed.run, the script and the
script's arguments, with the refusal of an option that is not ours.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fabric_lite.cli.torchrun import knows_option
from fabric_lite.errors import ConfigurationError, choices_error
from fabric_lite.registry import ACCELERATORS, PRECISIONS, STRATEGIES, Registry

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

