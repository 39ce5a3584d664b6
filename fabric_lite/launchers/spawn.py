"""Spawn / fork / forkserver: run a function in N new processes through torch.multiprocessing.

``torch.multiprocessing.start_processes`` owns the processes: when one raises or dies, ``join``
terminates the others at once and raises with that process's traceback or signal, which is the
root cause printed first.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.multiprocessing as mp

from fabric_lite.errors import ConfigurationError, FabricEnvironmentError
from fabric_lite.launchers.base import blamed_ranks, describe_exit, early_exit_event, is_peer_lost, print_root_cause
from fabric_lite.launchers.external import die_with_parent
from fabric_lite.utilities import hang
from fabric_lite.utilities.distributed import find_free_port, port_in_use

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric


class MultiProcessLauncher:
    """Start ``num_processes`` processes with ``start_method`` and call the function in each.

    The result of rank 0 is returned to the caller; every process runs with the rank variables set.
    """

    def __init__(self, *, num_processes: int, num_nodes: int = 1, start_method: str = "spawn", strategy_name: str = "ddp_spawn") -> None:
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.start_method = start_method
        self.strategy_name = strategy_name

    runs_function_in_new_processes = True

    @property
    def is_interactive_compatible(self) -> bool:
        return self.start_method == "fork"

    def check(self) -> None:
        """Refuse start methods this platform or process state cannot honour."""
        if self.start_method not in mp.get_all_start_methods():
            raise FabricEnvironmentError(
                f"Fabric(strategy={self.strategy_name!r}) needs the {self.start_method!r} start method, which this "
                f"platform does not offer (it has: {', '.join(mp.get_all_start_methods())}). "
                f"Fix: strategy='ddp_spawn' or strategy='ddp'."
            )
        if self.start_method == "fork" and torch.cuda.is_initialized():
            raise FabricEnvironmentError(
                f"Fabric(strategy={self.strategy_name!r}) forks processes, but CUDA is already initialised in this "
                f"process and cannot be used in forked children. Fix: do not touch CUDA before fabric.launch(), or "
                f"use strategy='ddp_spawn' / 'ddp'."
            )

    def launch(self, function: Callable[..., Any] | None, *args: Any, fabric: Fabric, **kwargs: Any) -> Any:
        if function is None:
            raise ConfigurationError(
                f"Fabric(strategy={self.strategy_name!r}) starts new processes that run a function, so fabric.launch() "
                f"needs one. Fix: def train(fabric): ...; fabric.launch(train) — or use strategy='ddp', which "
                f"re-runs your script."
            )
        self.check()
        address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" in os.environ:
            port = int(os.environ["MASTER_PORT"])
            if port_in_use(address, port):
                raise FabricEnvironmentError(
                    f"MASTER_PORT={port} is already in use on {address}, so the processes cannot meet there. "
                    f"Fix: unset MASTER_PORT (a free port is chosen) or set it to a free port."
                )
        else:
            port = find_free_port(address)
        env = {"MASTER_ADDR": address, "MASTER_PORT": str(port), "WORLD_SIZE": str(self.num_processes * self.num_nodes),
               "NODE_RANK": os.environ.get("NODE_RANK", "0"), "FABRIC_LITE_PARENT_PID": str(os.getpid())}
        context = mp.get_context(self.start_method)
        results = context.SimpleQueue()
        processes = mp.start_processes(
            _run_in_process,
            args=(function, args, kwargs, fabric, env, self.num_processes, results),
            nprocs=self.num_processes,
            start_method=self.start_method,
            join=False,
        )
        preemption = getattr(fabric, "_preemption", None)
        if preemption is not None:  # a preemption signal sent to this parent reaches every rank (they decide)
            preemption.forward_to([p.pid for p in processes.processes])
        try:
            while not processes.join():
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            index, how, callstack, event = _root_cause(processes, error, first_rank=self._rank(0))
            self._report(index, how, callstack, event)
            raise ProcessFailedError(f"rank {self._rank(index)} {event or f'failed with {how}'}; see the report above.") from None
        except BaseException as error:
            # Ctrl-C / a notebook's "interrupt kernel" reaches this parent alone: the ranks would train on, and the
            # interpreter's exit would wait for them (they are not daemons).
            stopped = _stop_processes(processes.processes)
            what = "interrupted (SIGINT)" if isinstance(error, KeyboardInterrupt) else f"stopped by {type(error).__name__}"
            print(f"fabric_lite: the launching process was {what}; stopped {stopped} running rank(s).", file=sys.stderr,
                  flush=True)
            raise
        return results.get() if not results.empty() else None

    def _rank(self, local_rank: int) -> int:
        return int(os.environ.get("NODE_RANK", "0")) * self.num_processes + local_rank

    def _report(self, local_rank: int, how: str, callstack: str | None, event: str | None = None) -> None:
        print_root_cause(rank=self._rank(local_rank), local_rank=local_rank, host=socket.gethostname(), how=how,
                         callstack=callstack, event=event)


class ProcessFailedError(FabricEnvironmentError):
    """A rank of a spawned run failed; the root cause was printed first."""


def _root_cause(processes: Any, error: Exception, *, first_rank: int = 0) -> tuple[int, str, str | None, str | None]:
    """The rank that failed first, as (local rank, how, traceback, event): torch reports whichever failure it noticed
    first, which under a collective is often a survivor complaining that its peer vanished, or, after a gathered
    failure (a sharded save), any rank repeating the error of the rank it names."""
    reported = error.error_index  # type: ignore[attr-defined]
    exceptions: list[tuple[float, int, str]] = []
    for index, path in enumerate(processes.error_files):
        try:
            with open(path, "rb") as handle:
                trace = pickle.load(handle)
            exceptions.append((os.path.getmtime(path), index, trace))
        except (OSError, EOFError, pickle.UnpicklingError):
            continue
    named = {rank - first_rank for _, _, trace in exceptions for rank in blamed_ranks(trace)}
    blamed = sorted(e for e in exceptions if e[1] in named)
    if blamed:
        return blamed[0][1], "an exception", blamed[0][2], None
    causes = sorted(e for e in exceptions if not is_peer_lost(e[2]))
    if isinstance(error, mp.ProcessExitedException) and not any(i == reported for _, i, _ in exceptions):
        how = describe_exit(-signal.Signals[error.signal_name].value if error.signal_name else error.exit_code)
        return reported, how, None, None  # died without a Python exception: nothing else can have caused it
    if causes:
        return causes[0][1], "an exception", causes[0][2], None
    for index, process in enumerate(processes.processes):
        if process.exitcode == 0 and exceptions:  # left while the others still waited for it in a collective
            return index, "exit code 0", None, early_exit_event(first_rank + exceptions[0][1])
    for index, process in enumerate(processes.processes):
        if process.exitcode is not None and process.exitcode < 0 and process.exitcode != -signal.SIGTERM:
            return index, describe_exit(process.exitcode), None, None
    trace = next((t for _, i, t in exceptions if i == reported), None)
    return reported, "an exception", trace, None


def _stop_processes(processes: list[Any], grace_s: float = 1.0) -> int:
    """SIGTERM the ranks still running, SIGKILL those still there after ``grace_s`` (a Preemption plugin catches
    SIGTERM), and reap them all. Returns how many were running."""
    running = [p for p in processes if p.is_alive()]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in running:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in running:
        if process.is_alive():
            process.kill()
        process.join(5)
    return len(running)


def _run_in_process(
    local_rank: int,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fabric: Fabric,
    env: dict[str, str],
    num_processes: int,
    results: Any,
) -> None:
    os.environ.update(env)
    node_rank = int(env["NODE_RANK"])
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["RANK"] = str(node_rank * num_processes + local_rank)
    die_with_parent()
    fabric._launched = True
    fabric._environment_ready = False  # a copy of the parent's object: this process is not set up yet
    fabric._setup_environment()
    try:
        output = function(fabric, *args, **kwargs)
        if fabric.global_rank == 0:
            results.put(output)
    except BaseException as error:
        hang.report_timeout(error)  # a timed-out collective: every rank prints its stack before join() stops them
        raise
    finally:
        fabric._strategy.teardown()
