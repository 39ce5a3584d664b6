"""The command line: ``fabric-run`` and ``fabric`` (with Lightning's subcommands ``fabric run`` and ``fabric consolidate``).

Usage::

    fabric-run [options] script.py [script arguments ...]       # = fabric run [options] script.py ...
    fabric-run [options] -m module [arguments ...]
    fabric-run [options] --no-python executable [arguments ...]
    fabric-run [options] -- [torch.distributed.run options] script.py [script arguments ...]
    fabric-run consolidate CHECKPOINT_FOLDER [--output_file FILE]   # = fabric consolidate ...

``fabric run`` and ``fabric consolidate`` take what Lightning's commands of the same names take
(``fabric run --accelerator=cpu --devices=2 train.py``, ``--num-nodes``/``--num_nodes``, ``--node-rank``,
``--main-address``, ``--main-port``, ``--strategy``, ``--precision``), so Lightning's documented commands work
with the import in the script renamed. ``fabric-run --help`` lists every option and the valid choices.
See fabric_lite/cli/run.py for how a run is handed to torch.distributed.run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fabric_lite.cli import consolidate, run

__all__ = ["fabric_main", "main"]

FABRIC_USAGE = """\
usage: fabric run [options] script.py [script arguments ...]
       fabric consolidate CHECKPOINT_FOLDER [--output_file FILE]

Commands:
  run          start a script on N processes (and M machines) through torch.distributed.run
  consolidate  merge a sharded checkpoint folder into one file that torch.load reads

`fabric run --help` and `fabric consolidate --help` list the options. `fabric-run ...` is `fabric run ...`."""

_COMMANDS = ("run", "consolidate")


def main(argv: Sequence[str] | None = None) -> int:
    """``fabric-run``: run a script; ``fabric-run consolidate ...`` merges a sharded checkpoint."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["consolidate"]:  # a subcommand; a script named "consolidate" can be run as ./consolidate
        return consolidate.main(argv[1:], prog="fabric-run consolidate")
    return run.run(argv, prog="fabric-run")


def fabric_main(argv: Sequence[str] | None = None) -> int:
    """``fabric``: the subcommands ``run`` and ``consolidate``, as Lightning's ``fabric`` has them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(FABRIC_USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run.run(rest, prog="fabric run")
    if command == "consolidate":
        return consolidate.main(rest, prog="fabric consolidate")
    print(f"fabric: {command!r} is not a command. Choose one of: {', '.join(_COMMANDS)}. "
          f"Fix: fabric run [options] script.py, or fabric --help.", file=sys.stderr)
    return 2
