"""Hang reports: when a collective times out, every rank prints its Python stack before the job is torn down.

A collective raises on the ranks that wait in it once the process group's ``timeout`` passes (gloo
raises ``Timed out waiting ...``), but the rank that never reached it is silent: it sleeps, loops or
waits elsewhere, and the launcher kills it without a trace. So each rank of a multi-process run keeps
one extra client connection to the rendezvous store and a daemon thread that looks for one key (a
store round trip every ``POLL_S``). A rank whose collective timed out prints the root cause, sets
that key and waits (at most ``ACK_WAIT_S``) until every rank has printed its stack; then its
exception goes on to the launcher, which tears the job down as for any failure. Works under every
launcher and across machines, since the store is the rendezvous every rank already reached.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

#: The longest a timed-out rank waits for the other ranks' stacks before it fails.
ACK_WAIT_S = 1.0
#: How often each rank's monitor looks for a timeout report (one store round trip).
POLL_S = 0.1
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
    """Start this rank's stack reporter (after ``init_process_group``); returns whether it runs.

    Also chains ``sys.excepthook`` so that an uncaught collective timeout triggers the report
    (the spawn launcher calls :func:`report_timeout` itself).
    """
    if world_size <= 1 or _state.get("started"):
        return bool(_state.get("started"))
    try:
        store = _client(address, port, 30.0)
    except Exception:  # noqa: BLE001 - no store to meet at (an unusual init method): hang reports are best effort
        return False
    _state.update(started=True, address=address, port=port, rank=rank, world_size=world_size,
                  timeout_s=timeout.total_seconds(), main=threading.main_thread(), host=socket.gethostname())
    stop = threading.Event()
    thread = threading.Thread(target=_monitor, args=(store, stop), name="fabric_lite-hang-monitor", daemon=True)
    thread.start()
    atexit.register(_stop_monitor, thread, stop)
    _chain_excepthook()
    return True


def _monitor(store: Any, stop: threading.Event) -> None:
    # Polling rather than a blocking store.wait(): a thread blocked in C++ while the interpreter exits
    # aborts the process (std::terminate); this one ends at exit (atexit sets ``stop``) within one period.
    key = _prefix() + "reported"
    try:
        while not store.check([key]):
            if stop.wait(POLL_S):
                return
        reporter = store.get(key).decode()
    except Exception:  # noqa: BLE001 - the store went away: the run ended
        return
    prefix = _prefix()
    rank = _state["rank"]
    if _in_report(_state["main"]):
        text = f"fabric_lite: rank {rank} timed out in the collective itself; its traceback follows in the failure report.\n"
    else:
        text = (f"fabric_lite: Python stack of rank {rank} (pid {os.getpid()} on {_state['host']}) when the collective "
                f"of rank {reporter} timed out:\n{main_thread_stack()}")
    _write(text)
    with contextlib.suppress(Exception):  # the timed-out rank may have gone already
        store.add(prefix + "dumped", 1)


def _stop_monitor(thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    thread.join(timeout=2 * POLL_S)


def main_thread_stack() -> str:
    """The main thread's current Python stack, formatted like a traceback (most recent call last)."""
    frame = sys._current_frames().get(_state.get("main", threading.main_thread()).ident)
    if frame is None:
        return "  (the main thread has ended)\n"
    return "".join(traceback.format_stack(frame))


def _in_report(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code is report_timeout.__code__:
            return True
        frame = frame.f_back
    return False


def _write(text: str) -> None:
    # One write per block so that stacks from several processes do not interleave line by line.
    try:
        sys.stderr.flush()
        os.write(2, text.encode(errors="replace"))
    except OSError:
        pass


def report_timeout(error: BaseException) -> None:
    """Called on a rank whose collective timed out: print the root cause, have every rank print its stack, wait."""
    if not _state.get("started") or _state.get("reported") or not is_collective_timeout(error):
        return
    _state["reported"] = True
    prefix, rank, world_size = _prefix(), _state["rank"], _state["world_size"]
    try:
        store = _client(_state["address"], _state["port"], 2.0)
        store.set(prefix + f"timed_out/{rank}", "1")
        first = store.add(prefix + "timeouts", 1) == 1
        if first:
            _write(
                f"fabric_lite: Root cause: a collective timed out on rank {rank} ({_state['host']}) after "
                f"{_state['timeout_s']:g} s: at least one rank never reached it. The Python stack of every rank "
                f"follows. Fix: make every rank call the same collectives in the same order, or raise the timeout "
                f"(DDPStrategy(timeout=datetime.timedelta(...)), FABRIC_LITE_COLLECTIVE_TIMEOUT or fabric-run "
                f"--collective-timeout) if a rank is only slow.\n"
            )
            store.set(prefix + "reported", str(rank))
        deadline = time.monotonic() + ACK_WAIT_S
        while time.monotonic() < deadline and store.add(prefix + "dumped", 0) < world_size:
            time.sleep(0.01)
        if first:
            waiting = [r for r in range(world_size) if store.check([prefix + f"timed_out/{r}"])]
            absent = [r for r in range(world_size) if r not in waiting]
            _write(f"fabric_lite: ranks that timed out waiting in the collective: {waiting}; ranks that did not "
                   f"reach it: {absent} (their stacks are above).\n")
    except Exception:  # noqa: BLE001 - the store is gone (its host rank died): nothing more can be collected
        return


def _chain_excepthook() -> None:
    previous = sys.excepthook

    def hook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        report_timeout(exc)
        previous(exc_type, exc, tb)

    sys.excepthook = hook
