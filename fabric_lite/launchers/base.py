"""The Launcher interface: make the processes, then run the user's function in each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric


class Launcher(Protocol):
    """Starts the processes of a run and calls ``function(fabric, *args, **kwargs)`` in each."""

    #: Whether the launcher can run from a notebook / interactive interpreter.
    is_interactive_compatible: bool

    #: Whether ``launch(function)`` runs ``function`` in processes it starts (state made there must come back
    #: through rank 0's return value), rather than in the calling process.
    runs_function_in_new_processes: bool

    def launch(self, function: Callable[..., Any] | None, *args: Any, fabric: Fabric, **kwargs: Any) -> Any:
        """Make the processes and run ``function`` (``None``: continue the calling script in every process)."""
        ...


def print_root_cause(
    *, rank: int, local_rank: int, host: str, how: str, callstack: str | None, first: bool = True, event: str | None = None
) -> None:
    """Print one failed rank to stderr, the root cause first: rank, host, exit code or signal, traceback.

    ``event`` replaces "failed with HOW", e.g. "exited (code 0) before rank 0 finished its collective".
    """
    import sys

    title = "Root cause" if first else "Also failed"
    event = event or f"failed with {how}"
    print(f"fabric_lite: {title}: rank {rank} (local rank {local_rank}) on {host} {event}.", file=sys.stderr)
    if callstack:
        print(callstack.rstrip(), file=sys.stderr)
    sys.stderr.flush()


def describe_exit(exitcode: int) -> str:
    """'exit code N' or 'signal NAME' for a process's return code (negative: killed by a signal)."""
    import signal

    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return f"signal {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"


# A collective fails on every survivor right after a peer dies: such errors are consequences, not causes.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
             "NCCL communicator was aborted")


def is_peer_lost(text: str) -> bool:
    """Whether an error text says a peer process vanished (the root cause is elsewhere)."""
    return any(marker in text for marker in PEER_LOST)


def blamed_ranks(text: str) -> list[int]:
    """The ranks an error says failed first: every rank raises the same error after a gathered failure (a sharded
    ``fabric.save`` says ``[failed on rank N]``), and the rank named there is the root cause, not the reporter."""
    import re

    return [int(rank) for rank in re.findall(r"\[failed on rank (\d+)", text)]


def early_exit_event(rank: int) -> str:
    """How the report words a rank that exited with code 0 while its peers still waited for it."""
    return f"exited (code 0) before rank {rank} finished its collective"
