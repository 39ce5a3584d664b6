"""The subprocess launcher (``strategy="ddp"`` from ``python train.py``): re-run the same command once per extra local rank.

The calling process becomes local rank 0. The other ranks are started and watched by
torch.distributed.elastic's process management (``start_processes``). A watcher thread in rank 0
reacts to the first failure: it prints the root cause (rank, host, exit code or signal, traceback),
stops the other ranks and ends rank 0, so that nothing waits for a collective timeout. The
children die with rank 0 even if it is SIGKILLed (parent-death signal, see launchers/external.py).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Callable

from fabric_lite.errors import FabricEnvironmentError
from fabric_lite.launchers.base import describe_exit, is_peer_lost, print_root_cause
from fabric_lite.launchers.external import PARENT_PID_VARIABLE, install_error_file_hook
from fabric_lite.utilities.distributed import find_free_port, port_in_use

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric


class SubprocessLauncher:
    is_interactive_compatible = False

    def __init__(self, *, num_processes: int, num_nodes: int = 1, **_: Any) -> None:
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self._context: Any = None
        self._stopping = threading.Event()

    def launch(self, function: Callable[..., Any] | None, *args: Any, fabric: Fabric, **kwargs: Any) -> Any:
        if self._context is None:
            self._start_other_ranks()
        fabric._setup_environment()
        return None if function is None else function(fabric, *args, **kwargs)

    def _start_other_ranks(self) -> None:
        import logging

        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, start_processes

        # torch's own log names children by their index (0 = our local rank 1); our report names ranks.
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)

        address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        node_rank = int(os.environ.get("NODE_RANK", "0"))
        if "MASTER_PORT" in os.environ:
            port = int(os.environ["MASTER_PORT"])
            if node_rank == 0 and port_in_use(address, port):
                raise FabricEnvironmentError(
                    f"MASTER_PORT={port} is already in use on {address}, so the processes cannot meet there. "
                    f"Fix: unset MASTER_PORT (a free port is chosen) or set it to a free port."
                )
        else:
            port = find_free_port(address)
        world_size = self.num_processes * self.num_nodes
        shared = {
            "MASTER_ADDR": address,
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size),
            "NODE_RANK": str(node_rank),
        }
        command = [sys.executable, *sys.orig_argv[1:]]
        envs = {}
        for local_rank in range(1, self.num_processes):
            envs[local_rank - 1] = {
                **os.environ,
                **shared,
                "LOCAL_RANK": str(local_rank),
                "RANK": str(node_rank * self.num_processes + local_rank),
                PARENT_PID_VARIABLE: str(os.getpid()),
            }
        if envs:
            self._context = start_processes(
                name="fabric_lite",
                entrypoint=command[0],
                args={i: tuple(command[1:]) for i in envs},
                envs=envs,
                logs_specs=DefaultLogsSpecs(log_dir=tempfile.mkdtemp(prefix="fabric_lite_logs_")),
            )
        # This process is local rank 0 from now on.
        os.environ.update(shared)
        os.environ["LOCAL_RANK"] = "0"
        os.environ["RANK"] = str(node_rank * self.num_processes)
        if self._context is not None:
            threading.Thread(target=self._watch, name="fabric_lite-watch", daemon=True).start()
            self._chain_excepthook()
            atexit.register(self._wait_for_children)

    def _watch(self) -> None:
        result = self._context.wait(timeout=-1, period=0.05)
        if result is None or not result.is_failed() or self._stopping.is_set():
            return  # success, or rank 0 failed first and is stopping the others itself
        report_failure(result.failures, self.num_processes, int(os.environ.get("NODE_RANK", "0")))
        self._context.close(death_sig=signal.SIGKILL)
        # Rank 0 may be blocked inside a collective that will never complete: end it now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def _chain_excepthook(self) -> None:
        """When rank 0 raises, say whether another rank failed first (its failure is then the root cause)."""
        install_error_file_hook()
        previous = sys.excepthook

        def hook(exc_type: Any, exc: Any, tb: Any) -> None:
            self._stopping.set()
            # A collective on rank 0 fails right after a peer dies; give that peer's exit a moment to be seen
            # (longer when the error itself says a peer vanished: on a loaded machine its exit takes a while).
            result = self._context.wait(timeout=3.0 if is_peer_lost(str(exc)) else 0.5, period=0.05)
            if result is not None and result.is_failed():
                report_failure(result.failures, self.num_processes, int(os.environ.get("NODE_RANK", "0")))
                print("fabric_lite: rank 0 then failed as a consequence:", file=sys.stderr, flush=True)
                previous(exc_type, exc, tb)
            else:
                previous(exc_type, exc, tb)
                print("fabric_lite: Root cause: rank 0 failed (traceback above); stopping the other ranks.",
                      file=sys.stderr, flush=True)
            self._stop_children()

        sys.excepthook = hook

    def _stop_children(self) -> None:
        if self._context is not None:
            self._stopping.set()
            self._context.close(death_sig=signal.SIGKILL)

    def _wait_for_children(self) -> None:
        """At a normal exit of rank 0, wait for the other ranks to finish their part of the script."""
        if self._context is None:
            return
        result = self._context.wait(timeout=-1, period=0.05)
        if result is not None and result.is_failed() and not self._stopping.is_set():
            report_failure(result.failures, self.num_processes, int(os.environ.get("NODE_RANK", "0")))
            os._exit(1)


def report_failure(failures: dict[int, Any], num_processes: int, node_rank: int) -> None:
    """Print the failures of the started ranks, the first one (by time) first."""
    host = socket.gethostname()
    ordered = sorted(failures.items(), key=lambda item: item[1].timestamp)
    for position, (index, failure) in enumerate(ordered):
        local_rank = index + 1  # child index 0 is local rank 1
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        message = data.get("message", {})
        callstack = message.get("extraInfo", {}).get("py_callstack") if isinstance(message, dict) else None
        print_root_cause(
            rank=node_rank * num_processes + local_rank, local_rank=local_rank, host=host,
            how=describe_exit(failure.exitcode), callstack=callstack, first=position == 0,
        )
