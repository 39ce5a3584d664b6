"""What ``fabric-run`` hands to torch.distributed.run: the threads per rank and the options after ``--``.

The options after ``--`` are read by torch.distributed.run's own parser (the one authority on which of them take a
value), so any option of the installed torch works there. Those that fabric-run derives from its own flags
(``--nproc-per-node`` from ``--devices``, ...) are refused there with the flag to use instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric_lite.errors import ConfigurationError

#: torch.distributed.run options that fabric-run sets from its own flags; after ``--`` they are refused.
DERIVED = {
    "nproc_per_node": "--devices",
    "nnodes": "--num-nodes",
    "node_rank": "--node-rank",
    "master_addr": "--main-address",
    "master_port": "--main-port",
    "max_restarts": "--max-restarts",
}
#: torch.distributed.run options that fabric-run also has under the same name: given after ``--`` they count as if
#: given before it (once only).
SHARED = ("module", "no_python", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "local_ranks_filter", "tee", "redirects",
          "log_dir")


@dataclass
class TorchrunTail:
    """The part of the command line after ``--``: torch.distributed.run options, then the script and its arguments."""

    script: str
    script_args: list[str]
    shared: dict[str, Any] = field(default_factory=dict)
    #: the other options, spelled out again as ``--name=value`` (or ``--flag``) for torch.distributed.run
    options: list[str] = field(default_factory=list)


def parse_tail(tail: Sequence[str], prog: str) -> TorchrunTail:
    """Read ``[torch.distributed.run options] script [script args]`` with torch.distributed.run's parser."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.prog = f"{prog} [options] --"
    namespace = vars(parser.parse_args(list(tail)))  # a malformed option: argparse's message and exit code 2
    script, script_args = namespace.pop("training_script"), list(namespace.pop("training_script_args"))
    defaults = vars(parser.parse_args([script]))
    given = {name: value for name, value in namespace.items() if value != defaults.get(name)}
    derived = sorted(set(given) & set(DERIVED))
    if derived:
        spelled = ", ".join(f"--{name.replace('_', '-')}" for name in derived)
        instead = ", ".join(DERIVED[name] for name in derived)
        raise ConfigurationError(
            f"{spelled} after `--` would override what {prog} derives from its own flags. "
            f"Fix: give {instead} before the `--` (the options before it are {prog}'s, those after it go to "
            f"torch.distributed.run, then comes the script)."
        )
    tail_info = TorchrunTail(script, script_args)
    for name, value in given.items():
        if name in SHARED:
            tail_info.shared[name] = value
        elif value is True:
            tail_info.options.append(f"--{name.replace('_', '-')}")
        else:
            tail_info.options.append(f"--{name.replace('_', '-')}={value}")
    return tail_info


def knows_option(option: str) -> bool:
    """Whether the installed torch.distributed.run takes ``option`` (``--signals-to-handle`` came in torch 2.10)."""
    from torch.distributed.run import get_args_parser

    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", get_args_parser().format_usage()) is not None


def cpus_available() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_rank(processes_per_node: int) -> int:
    """OMP_NUM_THREADS for each of ``processes_per_node`` ranks: the cores shared out, at least one each."""
    return max(1, cpus_available() // max(1, processes_per_node))
