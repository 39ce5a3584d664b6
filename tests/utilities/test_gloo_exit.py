"""The exit drain: wait until gloo's worker threads sleep, so none takes the GIL while Python finalizes.

The SIGABRT it prevents is a scheduling race (about 1 in 30 loaded 2-process runs); the 2-process exit
test is tests/strategies/test_ddp.py::test_a_run_that_ends_in_a_collective_exits_cleanly. Here the drain
itself is tested on real threads: gloo's own workers of a real process group, and a thread that carries
the workers' name while it computes, as a worker still finishing a work on a loaded machine does.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from fabric_lite.utilities import gloo_exit

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread states from /proc")


def _start_named_like_a_gloo_worker(work) -> threading.Thread:
    """Start a thread that renames itself as gloo names its workers, then runs ``work``."""
    named = threading.Event()

    def body():
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as handle:
            handle.write(gloo_exit._THREAD_NAME)
        named.set()
        work()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert named.wait(10)
    return thread


def test_real_gloo_workers_are_found_and_drain_once_idle(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    group = dist.ProcessGroupGloo(store, 0, 1, timeout=timedelta(seconds=30))
    try:
        tensor = torch.ones(4)
        group.allreduce([tensor]).wait()
        assert len(gloo_exit._gloo_workers()) >= 1  # the names torch gives them are what the drain looks for
        started = time.monotonic()
        assert gloo_exit.drain_workers(max_wait_s=5.0) is True
        assert time.monotonic() - started < 1.0
    finally:
        del group


def test_a_worker_that_is_still_computing_is_waited_for_and_then_released():
    stop = threading.Event()

    def compute():
        blob = bytes(range(256)) * 32768  # 8 MiB: each hash is milliseconds of one core without the GIL
        while not stop.is_set():
            hashlib.sha256(blob).digest()  # single-threaded (a matmul's OpenMP waits would read as asleep)

    thread = _start_named_like_a_gloo_worker(compute)
    try:
        started = time.monotonic()
        assert gloo_exit.drain_workers(max_wait_s=0.3) is False  # never quiet: gives up at the cap
        assert 0.3 <= time.monotonic() - started < 2.0
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert gloo_exit.drain_workers(max_wait_s=2.0) is True  # the thread is gone: nothing to wait for


def test_a_sleeping_named_thread_counts_as_drained():
    release = threading.Event()
    thread = _start_named_like_a_gloo_worker(lambda: release.wait(30))
    try:
        assert str(thread.native_id) in gloo_exit._gloo_workers()
        assert gloo_exit.drain_workers(max_wait_s=2.0) is True
    finally:
        release.set()
        thread.join(10)
