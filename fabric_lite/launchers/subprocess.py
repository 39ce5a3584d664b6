"""The subprocess launcher (``strategy="ddp"`` from ``python train.py``): re-run the same command once per extra local rank.

The calling process becomes local rank 0. The other ranks are started and watched by
torch.distributed.elastic's process management (``start_processes``). A watcher thread in rank 0
reacts to the first failure: it prints the root cause (rank, host, exit code or signal, traceback),
stops the other ranks and ends rank 0, so that nothing waits for a collective timeout. A rank that
exits with code 0 before the others are done with it is reported as such. SIGTERM, SIGINT, SIGHUP
and SIGQUIT to rank 0 stop every rank within moments, even while rank 0 is blocked in a collective
(launchers/signals.py). The children die with rank 0 even if it is SIGKILLed (parent-death signal,
see launchers/external.py). The folder for the children's logs and error files is removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Callable

from fabric_lite.errors import ConfigurationError, FabricEnvironmentError
from fabric_lite.launchers.base import (
    blamed_ranks,
    describe_exit,
    early_exit_event,
    is_peer_lost,
    print_root_cause,
)
from fabric_lite.launchers.external import PARENT_PID_VARIABLE, install_error_file_hook
from fabric_lite.launchers.signals import STOP_SIGNALS, SignalGuard, signal_name
from fabric_lite.utilities import hang
from fabric_lite.utilities.distributed import find_free_port, port_in_use

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric

#: After the other ranks all exited with code 0, how long rank 0 may still need to finish its own rendezvous
#: before they are known never to have joined it.
_RENDEZVOUS_GRACE_S = 2.0


class SubprocessLauncher:
    is_interactive_compatible = False
    runs_function_in_new_processes = False  # the calling process is rank 0 and runs the function itself

    def __init__(self, *, num_processes: int, num_nodes: int = 1, strategy_name: str = "ddp", **_: Any) -> None:
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.strategy_name = strategy_name
        self._context: Any = None
        self._log_dir: str | None = None
        self._stopping = threading.Event()
        self._joined = threading.Event()  # rank 0 is through the rendezvous
        self._guard: SignalGuard | None = None

    def launch(self, function: Callable[..., Any] | None, *args: Any, fabric: Fabric, **kwargs: Any) -> Any:
        if self._context is None:
            self._start_other_ranks()
        fabric._setup_environment()
        self._joined.set()
        if self._guard is not None:
            self._guard.count_new_handlers()  # e.g. the Preemption plugin's, installed by the set-up
        return None if function is None else function(fabric, *args, **kwargs)

    def _start_other_ranks(self) -> None:
        import logging

        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, start_processes

        command = rerun_command(self.strategy_name, self.num_processes) if self.num_processes > 1 else []
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
        envs = {}
        for local_rank in range(1, self.num_processes):
            envs[local_rank - 1] = {
                **os.environ,
                **shared,
                "LOCAL_RANK": str(local_rank),
                "RANK": str(node_rank * self.num_processes + local_rank),
                PARENT_PID_VARIABLE: str(os.getpid()),
            }
        before = {number: signal.getsignal(number) for number in STOP_SIGNALS}
        if envs:
            self._log_dir = tempfile.mkdtemp(prefix="fabric_lite_logs_")
            try:
                self._context = start_processes(
                    name="fabric_lite",
                    entrypoint=command[0],
                    args={i: tuple(command[1:]) for i in envs},
                    envs=envs,
                    logs_specs=DefaultLogsSpecs(log_dir=self._log_dir),
                )
            except BaseException:
                self._remove_logs()
                raise
        # This process is local rank 0 from now on.
        os.environ.update(shared)
        os.environ["LOCAL_RANK"] = "0"
        os.environ["RANK"] = str(node_rank * self.num_processes)
        if self._context is not None:
            # start_processes gave rank 0 torch's agent handlers (a SignalException, deferred while blocked): put back
            # what was there, made to work while rank 0 is blocked.
            self._guard = SignalGuard(self._stop_on_signal)
            self._guard.install(before)
            threading.Thread(target=self._watch, name="fabric_lite-watch", daemon=True).start()
            self._chain_excepthook()
            atexit.register(self._wait_for_children)

    # ------------------------------------------------------------------ watching the other ranks
    @property
    def _node_rank(self) -> int:
        return int(os.environ.get("NODE_RANK", "0"))

    def _watch(self) -> None:
        result = self._context.wait(timeout=-1, period=0.05)
        if result is not None and not result.is_failed():
            # Every other rank exited with code 0. Normal once rank 0 is through the rendezvous; before it, they
            # never joined, and rank 0 would wait for them until the timeout.
            if self._joined.wait(_RENDEZVOUS_GRACE_S) or self._stopping.is_set():
                return
            _report_early_exits(self._exited_early(), self.num_processes, self._node_rank,
                                "exited (code 0) without joining the rendezvous, where rank 0 waits for it")
            self._end(1)
        if result is None or self._stopping.is_set():
            return  # rank 0 failed first and is stopping the others itself
        report_failure(result.failures, self.num_processes, self._node_rank, exited_early=self._exited_early())
        self._end(1)

    def _exited_early(self) -> list[int]:
        """The local ranks (1..N-1) whose process exited with code 0."""
        handlers = getattr(self._context, "subprocess_handlers", {}) if self._context is not None else {}
        return sorted(index + 1 for index, handler in handlers.items() if handler.proc.poll() == 0)

    def _chain_excepthook(self) -> None:
        """When rank 0 raises, say whether another rank failed first (its failure is then the root cause)."""
        install_error_file_hook()
        previous = sys.excepthook

        def hook(exc_type: Any, exc: Any, tb: Any) -> None:
            self._stopping.set()
            if isinstance(exc, KeyboardInterrupt):
                previous(exc_type, exc, tb)
                print("fabric_lite: rank 0 was interrupted (SIGINT); stopping the other ranks.", file=sys.stderr, flush=True)
                self._stop_children()
                return
            text = str(exc)
            own = self._node_rank * self.num_processes
            blamed = [r for r in blamed_ranks(text) if r != own]
            peer_lost = is_peer_lost(text)
            # A collective on rank 0 fails right after a peer dies; give that peer's exit a moment to be seen
            # (longer when the error itself says a peer vanished or failed: on a loaded machine its exit takes a while).
            result = self._context.wait(timeout=3.0 if peer_lost or blamed else 0.5, period=0.05)
            early = self._exited_early() if peer_lost or hang.is_collective_timeout(exc) else []
            if result is not None and result.is_failed():
                report_failure(result.failures, self.num_processes, self._node_rank, blamed=blamed, exited_early=early)
                print("fabric_lite: rank 0 then failed as a consequence:", file=sys.stderr, flush=True)
                previous(exc_type, exc, tb)
            elif early:
                _report_early_exits(early, self.num_processes, self._node_rank, early_exit_event(own))
                print("fabric_lite: rank 0 then failed as a consequence:", file=sys.stderr, flush=True)
                previous(exc_type, exc, tb)
            else:
                previous(exc_type, exc, tb)
                print("fabric_lite: Root cause: rank 0 failed (traceback above); stopping the other ranks.",
                      file=sys.stderr, flush=True)
            self._stop_children()

        sys.excepthook = hook

    # ------------------------------------------------------------------ stopping
    def _stop_on_signal(self, number: int) -> None:
        """A stop signal reached rank 0 (it may be blocked in a collective): stop every rank now."""
        self._stopping.set()
        os.write(2, f"fabric_lite: rank 0 received {signal_name(number)}; stopping every rank.\n".encode())
        self._end(128 + number)

    def _end(self, code: int) -> None:
        """From the watcher thread: end the other ranks and rank 0 (which may be blocked inside a collective) now.

        SIGKILL and exit without waiting: once the other ranks die, rank 0's collective fails and its main thread
        would start the interpreter's shutdown, which freezes this daemon thread before it could exit.
        """
        self._stopping.set()
        self._remove_logs()
        pids = list(self._context.pids().values()) if self._context is not None else []
        for pid in pids:  # each child leads a session of its own: its process group holds its own children too
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def _stop_children(self) -> None:
        if self._context is not None:
            self._stopping.set()
            self._context.close(death_sig=signal.SIGKILL)
        self._remove_logs()

    def _remove_logs(self) -> None:
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def _wait_for_children(self) -> None:
        """At a normal exit of rank 0, wait for the other ranks to finish their part of the script."""
        if self._context is None:
            return
        result = self._context.wait(timeout=-1, period=0.05)
        if result is not None and result.is_failed() and not self._stopping.is_set():
            report_failure(result.failures, self.num_processes, self._node_rank)
            self._end(1)
        self._remove_logs()


def rerun_command(strategy_name: str, num_processes: int) -> list[str]:
    """The command that runs this script again (for local ranks 1..N-1); refuse a script that cannot be re-run."""
    argv0 = sys.argv[0] if sys.argv else ""
    source = {"": "an interactive session", "-": "standard input (python - < script.py)", "-c": "python -c"}.get(argv0)
    if source is None and (bool(sys.flags.interactive) or "ipykernel" in sys.modules or hasattr(sys, "ps1")):
        source = "an interactive session"
    if source is None and not os.path.exists(argv0):
        source = f"{argv0!r}, which is not found from the current folder {os.getcwd()!r}"
    if source is not None:
        raise ConfigurationError(
            f"Fabric(strategy={strategy_name!r}, devices={num_processes}) re-runs your script once per extra process, "
            f"but the code comes from {source}, which cannot be run again. Fix: save the code to a file and run it "
            f"as `python train.py` or `fabric-run --devices {num_processes} train.py`, or use strategy='ddp_spawn' "
            f"(strategy='ddp_notebook' in a notebook) with fabric.launch(train)."
        )
    return [sys.executable, *sys.orig_argv[1:]]


def report_failure(
    failures: dict[int, Any],
    num_processes: int,
    node_rank: int,
    *,
    blamed: list[int] | None = None,
    exited_early: list[int] | None = None,
) -> None:
    """Print the failures of the started ranks, the root cause first.

    The root cause is a rank another rank's error names (``blamed``), else the first failure (by time) that is not a
    consequence of a lost peer, else a rank that exited with code 0 while the others waited for it, else the first.
    """
    host = socket.gethostname()
    entries = []
    for index, failure in failures.items():
        local_rank = index + 1  # child index 0 is local rank 1
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        message = data.get("message", {})
        callstack = message.get("extraInfo", {}).get("py_callstack") if isinstance(message, dict) else None
        text = callstack or (message.get("message", "") if isinstance(message, dict) else str(message))
        entries.append((local_rank, failure, callstack, text))
    named = set(blamed or []) | {r for _, _, _, text in entries for r in blamed_ranks(text)}
    consequences = all(is_peer_lost(text) for _, _, _, text in entries)
    first = True
    if exited_early and consequences:
        _report_early_exits(exited_early, num_processes, node_rank, early_exit_event(node_rank * num_processes))
        first = False

    def order(entry: tuple[int, Any, str | None, str]) -> tuple[int, float]:
        local_rank, failure, _, text = entry
        rank = node_rank * num_processes + local_rank
        return (0 if rank in named else 1 if not is_peer_lost(text) else 2, failure.timestamp)

    for local_rank, failure, callstack, _ in sorted(entries, key=order):
        print_root_cause(
            rank=node_rank * num_processes + local_rank, local_rank=local_rank, host=host,
            how=describe_exit(failure.exitcode), callstack=callstack, first=first,
        )
        first = False


def _report_early_exits(local_ranks: list[int], num_processes: int, node_rank: int, event: str) -> None:
    host = socket.gethostname()
    for position, local_rank in enumerate(local_ranks):
        print_root_cause(rank=node_rank * num_processes + local_rank, local_rank=local_rank, host=host,
                         how="exit code 0", callstack=None, first=position == 0, event=event)
