"""Let gloo's worker threads finish before the interpreter finalizes, so that a clean exit is not a SIGABRT.

A gloo collective runs on a ``pt_gloo_runloop`` worker thread. After it completes, the worker drops its
reference to the work, and with it to the work's tensors; a tensor that Python has seen gives its
Python object back at that moment, which takes the GIL (torch 2.13 does so whenever a C++ reference
to such a tensor goes away). The caller has already been woken, though: on a loaded machine the
worker may not be scheduled again before the main thread reaches ``Py_FinalizeEx``. From then on a
thread that takes the GIL is ended with ``pthread_exit``, whose unwinding through the work's
``noexcept`` destructor is ``std::terminate``: "terminate called without an active exception" and
SIGABRT in a process whose script succeeded (seen in about 1 of 30 2-process runs on a 2-core host;
a core dump shows ``~AsyncAllreduceWork`` -> ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit``).

torch offers no way to wait for that (gloo has no ``shutdown()``; its threads are joined only when the
last reference to the group goes, and a DDP module still holds one). So at exit, before finalization,
:func:`drain_workers` gives the GIL away in short sleeps until no gloo worker thread of this process is
runnable, a few checks in a row: a worker that still has to drop a work is then either running or
waiting for the GIL we released, and shows as runnable. Linux only (``/proc``); elsewhere it returns.
"""

from __future__ import annotations

import os
import time

_THREAD_NAME = "pt_gloo_runloop"
_TASKS = "/proc/self/task"
#: Checks in a row with every worker asleep that count as drained, the pause between two, and the cap.
QUIET_CHECKS = 3
PAUSE_S = 0.002
MAX_WAIT_S = 2.0


def _gloo_workers() -> list[str]:
    tasks = []
    try:
        for tid in os.listdir(_TASKS):
            try:
                with open(f"{_TASKS}/{tid}/comm") as handle:
                    if handle.read().strip() == _THREAD_NAME:
                        tasks.append(tid)
            except OSError:  # the thread ended while we looked
                continue
    except OSError:  # no /proc (macOS, Windows)
        return []
    return tasks


def _runnable(tid: str) -> bool:
    try:
        with open(f"{_TASKS}/{tid}/stat") as handle:
            # The state follows the parenthesized command name, which may itself hold spaces or parentheses.
            return handle.read().rsplit(")", 1)[1].split()[0] in ("R", "D")
    except (OSError, IndexError):  # gone: nothing left to wait for
        return False


def drain_workers(max_wait_s: float = MAX_WAIT_S) -> bool:
    """Wait (at most ``max_wait_s``) until this process's gloo workers have all gone to sleep; True if they did."""
    workers = _gloo_workers()
    if not workers:
        return True
    deadline = time.monotonic() + max_wait_s
    quiet = 0
    while quiet < QUIET_CHECKS:
        if time.monotonic() > deadline:
            return False
        time.sleep(PAUSE_S)  # releases the GIL: a worker waiting for it takes it now
        quiet = 0 if any(_runnable(tid) for tid in workers) else quiet + 1
    return True
