"""Hang reports: when a collective times out, the ranks that never reached it print their Python stacks first.

A collective raises on the ranks that wait in it once the process group's ``timeout`` passes (gloo
raises ``Timed out waiting ...``), but the rank that never reached it is silent: it sleeps, loops or
waits elsewhere, and the launcher kills it without a trace. So every rank of a multi-process run
registers ``faulthandler`` on ``DUMP_SIGNAL`` (a C-level handler: it prints the Python stack of every
thread even while the rank is blocked inside C++) and publishes its host and pid in the rendezvous
store once, at start. The first rank whose collective times out prints the root cause, signals each
rank of its machine that did not time out, so that it prints its stack, and then fails as usual; the
launcher tears the job down. Nothing runs in between (no thread, no polling). Ranks on other machines
are named but their stacks cannot be fetched from here.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from typing import Any

#: The signal that makes a rank print its stacks (a real-time signal that nothing else here uses).
DUMP_SIGNAL = signal.SIGRTMIN + 7 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2
#: How long the reporter lets one signalled rank write its stack, and how long timed-out peers wait for it.
DUMP_WAIT_S = 0.3
REPORT_DEADLINE_S = 2.0
# Texts of the errors torch raises when a collective times out (gloo on CPU, the NCCL watchdog).
_TIMEOUT_MARKERS = ("Timed out waiting", "Watchdog caught collective operation timeout")

_state: dict[str, Any] = {}


def is_collective_timeout(error: BaseException) -> bool:
    """Whether ``error`` is torch.distributed reporting that a collective waited past its timeout."""
    import torch.distributed as dist

    text = str(error)
    if isinstance(error, dist.DistError) and "timeout" in text.lower():
        return True
    return isinstance(error, RuntimeError) and any(marker in text for marker in _TIMEOUT_MARKERS)


def _prefix() -> str:
    # torchrun keeps its store across restarts (--max-restarts): each attempt gets its own keys.
    return f"fabric_lite/hang/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def _client(address: str, port: int, timeout_s: float) -> Any:
    import torch.distributed as dist

    return dist.TCPStore(address, port, is_master=False, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def start_monitor(*, address: str, port: int, rank: int, world_size: int, timeout: timedelta) -> bool:
    """Prepare this rank for hang reports (after ``init_process_group``); returns whether it is ready.

    Also chains ``sys.excepthook`` so that an uncaught collective timeout triggers the report
    (the spawn launcher calls :func:`report_timeout` itself).
    """
    if world_size <= 1 or _state.get("started"):
        return bool(_state.get("started"))
    host = socket.gethostname()
    faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True, chain=False)
    try:
        store = _client(address, port, 30.0)
        store.set(_prefix() + f"pid/{rank}", f"{host}\t{os.getpid()}")
        del store  # one round trip at start; the connection is not kept
    except Exception:  # noqa: BLE001 - no store to meet at (an unusual init method): hang reports are best effort
        faulthandler.unregister(DUMP_SIGNAL)
        return False
    _state.update(started=True, address=address, port=port, rank=rank, world_size=world_size, host=host,
                  timeout_s=timeout.total_seconds())
    _chain_excepthook()
    return True


def _write(text: str) -> None:
    try:
        sys.stderr.flush()
        os.write(2, text.encode(errors="replace"))
    except OSError:
        pass


def report_timeout(error: BaseException) -> None:
    """On a rank whose collective timed out: print the root cause and have the absent ranks print their stacks."""
    if not _state.get("started") or _state.get("reported") or not is_collective_timeout(error):
        return
    _state["reported"] = True
    prefix, rank, world_size = _prefix(), _state["rank"], _state["world_size"]
    deadline = time.monotonic() + REPORT_DEADLINE_S
    try:
        store = _client(_state["address"], _state["port"], REPORT_DEADLINE_S)
        store.set(prefix + f"timed_out/{rank}", "1")
        if store.add(prefix + "timeouts", 1) != 1:
            # Another rank reports; stay alive until it is done, or a launcher would kill the absent ranks first.
            while time.monotonic() < deadline and not store.check([prefix + "done"]):
                time.sleep(0.02)
            return
        time.sleep(0.1)  # the other waiting ranks time out within moments of this one: let them say so
        absent = [r for r in range(world_size) if r != rank and not store.check([prefix + f"timed_out/{r}"])]
        exited = [r for r in absent if _has_exited(store, prefix, r)]
        if exited:  # a rank that left early (returned, exited with code 0) is the cause, not the one that waited
            names = ", ".join(f"rank {r}" for r in exited)
            _write(
                f"fabric_lite: Root cause: {names} exited before rank {rank} finished its collective; rank {rank} "
                f"({_state['host']}) timed out waiting after {_state['timeout_s']:g} s. Fix: let every rank run the "
                f"same collectives to the end (no rank may return or exit early).\n"
            )
        else:
            _write(
                f"fabric_lite: Root cause: a collective timed out on rank {rank} ({_state['host']}) after "
                f"{_state['timeout_s']:g} s: at least one rank never reached it. Stacks of the ranks that did not time "
                f"out follow. Fix: make every rank call the same collectives in the same order, or raise the timeout "
                f"(DDPStrategy(timeout=datetime.timedelta(...)), FABRIC_LITE_COLLECTIVE_TIMEOUT or fabric-run "
                f"--collective-timeout) if a rank is only slow.\n"
            )
        for other in absent:
            if other in exited:
                _write(f"fabric_lite: rank {other} has already exited: it left before the collective; no stack.\n")
            else:
                _dump_rank(store, prefix, other)
        waiting = [r for r in range(world_size) if r not in absent]
        _write(f"fabric_lite: ranks that timed out waiting in the collective: {waiting}; ranks that did not reach "
               f"it: {absent}.\n")
        store.set(prefix + "done", "1")
    except Exception:  # noqa: BLE001 - the store is gone (its host died): nothing more can be collected
        return


def _has_exited(store: Any, prefix: str, rank: int) -> bool:
    """Whether ``rank`` runs on this machine and its process is gone (or a zombie); unknown elsewhere: False."""
    key = prefix + f"pid/{rank}"
    if not store.check([key]):
        return False
    host, pid = store.get(key).decode().split("\t")
    if host != _state["host"]:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:  # a zombie (its parent has not reaped it yet) has exited too
        with open(f"/proc/{int(pid)}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _dump_rank(store: Any, prefix: str, rank: int) -> None:
    key = prefix + f"pid/{rank}"
    if not store.check([key]):
        _write(f"fabric_lite: rank {rank} never registered for hang reports; no stack available.\n")
        return
    host, pid = store.get(key).decode().split("\t")
    if host != _state["host"]:
        _write(f"fabric_lite: rank {rank} runs on {host}: its stack cannot be fetched from {_state['host']}.\n")
        return
    _write(f"fabric_lite: Python stack of rank {rank} (pid {pid} on {host}), which did not reach the collective "
           f"(most recent call first):\n")
    try:
        os.kill(int(pid), DUMP_SIGNAL)
    except ProcessLookupError:
        _write(f"fabric_lite: rank {rank} (pid {pid}) has already exited: it left before the collective.\n")
        return
    time.sleep(DUMP_WAIT_S)  # faulthandler writes from the signal handler at once; let it finish


def _chain_excepthook() -> None:
    previous = sys.excepthook

    def hook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        report_timeout(exc)
        previous(exc_type, exc, tb)

    sys.excepthook = hook
