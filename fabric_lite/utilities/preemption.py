"""Preemption: a signal (SIGTERM, SIGUSR1) only sets a flag; ranks agree on it each step; SLURM jobs are requeued.

The handler does nothing but record the signal, so a rank is never interrupted in the middle of a
step or a collective. ``fabric.should_stop()`` turns the per-rank flags into one decision with a
single ``all_reduce(MAX)`` of a one-element tensor, so that every rank sees ``True`` at the same
step, saves the same step and leaves the loop. Under SLURM (``SLURM_JOB_ID`` set), global rank 0
then runs ``scontrol requeue <job id>`` when the process exits (after the user's save), or earlier
through :meth:`Preemption.requeue`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from fabric_lite.errors import ConfigurationError, UsageError

#: What ``requeue=`` accepts: "auto" requeues when SLURM_JOB_ID is set, True always tries, False never.
REQUEUE_CHOICES = ("auto", True, False)


class Preemption:
    """Catch preemption signals and let the training loop stop cleanly on every rank at the same step.

    Args:
        signals: the signals that mean "stop soon", by name or number. A second delivery of the same
            signal ends the process as if no handler were installed (so a stuck run can still be stopped).
        requeue: ``"auto"`` (default) runs the requeue command at exit when ``SLURM_JOB_ID`` is set and the
            loop stopped because of a signal; ``True`` also warns when there is no job id; ``False`` never.
        requeue_command: the command, the job id is appended (default ``scontrol requeue``; ``scontrol`` is
            looked up on ``PATH``).

    Example:
        >>> from fabric_lite import Fabric
        >>> fabric = Fabric(accelerator="cpu", plugins=[Preemption(signals=("SIGUSR1",), requeue=False)])
        >>> fabric.launch()
        >>> fabric.should_stop()
        False
    """

    def __init__(
        self,
        signals: Sequence[str | int] = ("SIGTERM", "SIGUSR1"),
        requeue: str | bool = "auto",
        requeue_command: Sequence[str] | str = ("scontrol", "requeue"),
    ) -> None:
        if isinstance(signals, (str, int)):
            signals = (signals,)
        self.signals = tuple(_signal_of(s) for s in signals)
        if not self.signals:
            raise ConfigurationError(
                "Preemption(signals=()) catches no signal, so nothing could ever stop the loop. "
                "Fix: Preemption(signals=('SIGTERM', 'SIGUSR1')) or leave signals out."
            )
        if not any(requeue is choice for choice in REQUEUE_CHOICES) and requeue != "auto":
            raise ConfigurationError(
                f"Preemption(requeue={requeue!r}) is not a known requeue mode. Choose one of: 'auto', True, False."
            )
        self.requeue_mode = requeue
        self.requeue_command = tuple(shlex.split(requeue_command) if isinstance(requeue_command, str) else requeue_command)
        if not self.requeue_command:
            raise ConfigurationError(
                "Preemption(requeue_command=()) is empty. Fix: leave it out (scontrol requeue) or give the command, "
                "e.g. requeue_command=('scontrol', 'requeue')."
            )
        self.received: str | None = None  # the name of the first signal this process got
        self.stop_agreed = False  # should_stop() returned True (on every rank alike)
        self.requeued = False
        self._previous: dict[int, Any] = {}
        self._installed = False
        self._rank = 0

    # ------------------------------------------------------------------ installing
    def install(self, *, global_rank: int = 0) -> None:
        """Install the handlers in this process (Fabric does it in every rank when the rank is set up)."""
        if self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            raise UsageError(
                "Fabric(plugins=[Preemption(...)]) must be set up in the main thread: Python delivers signals only "
                "there. Fix: create the Fabric object and call fabric.launch() from the main thread."
            )
        self._rank = global_rank
        for number in self.signals:
            self._previous[number] = signal.signal(number, self._handle)
        self._installed = True
        if global_rank == 0:
            atexit.register(self._requeue_at_exit)

    def forward_to(self, pids: Sequence[int]) -> None:
        """In a launching process that runs no rank itself (spawn): pass each signal on to the ranks' processes."""
        if threading.current_thread() is not threading.main_thread():
            return

        def forward(number: int, frame: Any) -> None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, number)

        for number in self.signals:
            signal.signal(number, forward)

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install`."""
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self._installed = False

    def _handle(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if self.received == name:
            # The same signal twice: the sender means it. Behave as without the plugin.
            previous = self._previous.get(number)
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(number)
            return
        if self.received is None:
            self.received = name
            # os.write, not print: a handler may run while the main thread is inside print.
            os.write(2, f"fabric_lite: rank {self._rank} received {name}; fabric.should_stop() will return True at "
                        f"its next call on every rank.\n".encode())

    # ------------------------------------------------------------------ deciding
    @property
    def flag(self) -> bool:
        """Whether this process received one of the signals."""
        return self.received is not None

    def agree(self, decided: bool) -> bool:
        """Record the decision all ranks reached (Fabric calls this from ``should_stop``)."""
        if decided:
            self.stop_agreed = True
        return decided

    # ------------------------------------------------------------------ requeueing
    def job_id(self, env: Mapping[str, str] | None = None) -> str | None:
        """The SLURM job to requeue: ``ARRAYJOB_TASK`` for array jobs, else ``SLURM_JOB_ID``; None outside SLURM."""
        env = os.environ if env is None else env
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return env.get("SLURM_JOB_ID") or None

    def requeue(self) -> bool:
        """Run the requeue command now (global rank 0 only; other ranks return False). Returns whether it succeeded.

        Call it after your last save if the process must not wait for exit; otherwise it runs at exit by itself.
        """
        if self._rank != 0 or self.requeued or self.requeue_mode is False:
            return False
        job = self.job_id()
        if job is None:
            if self.requeue_mode is True:
                _say("Preemption(requeue=True) cannot requeue: SLURM_JOB_ID is not set, so this is not a SLURM job. "
                     "Fix: run under sbatch/srun, or use requeue='auto' to requeue only under SLURM.")
            return False
        command = [*self.requeue_command, job]
        self.requeued = True
        # Said before the command: a successful requeue makes SLURM cancel this step at once, and the SIGTERM
        # can arrive before a line printed afterwards (seen in the SLURM test under load).
        _say(f"requeueing SLURM job {job} (`{shlex.join(command)}`)")
        try:
            result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            _say(f"could not requeue SLURM job {job} with `{shlex.join(command)}`: {error}. "
                 f"Fix: make sure {self.requeue_command[0]!r} is on PATH, or requeue the job by hand.")
            return False
        if result.returncode != 0:
            _say(f"`{shlex.join(command)}` failed with exit code {result.returncode}: {result.stderr.strip()} "
                 f"Fix: check that the job allows requeueing (sbatch --requeue) or requeue it by hand.")
            return False
        return True

    def _requeue_at_exit(self) -> None:
        if self.stop_agreed and self.requeue_mode is not False:
            self.requeue()

    def __getstate__(self) -> dict[str, Any]:
        # Spawned processes get a copy: handlers and flags belong to the process that installed them.
        state = dict(self.__dict__)
        state.update(_previous={}, _installed=False, received=None, stop_agreed=False, requeued=False)
        return state

    def __repr__(self) -> str:
        names = ", ".join(repr(signal.Signals(s).name) for s in self.signals)
        return f"Preemption(signals=({names}), requeue={self.requeue_mode!r})"


def _say(text: str) -> None:
    print(f"fabric_lite: {text}", file=sys.stderr, flush=True)


def _signal_of(value: str | int) -> int:
    names = [s.name for s in signal.Signals if not s.name.startswith("SIG_") and s not in _UNCATCHABLE]
    try:
        if isinstance(value, str):
            name = value.strip().upper()
            number = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        else:
            number = signal.Signals(value)
    except (KeyError, ValueError):
        number = None
    if number is None or number in _UNCATCHABLE:
        raise ConfigurationError(
            f"Preemption(signals=({value!r},)) is not a signal a process can catch. "
            f"Choose one of: {', '.join(sorted(names))}. Fix: SLURM sends SIGTERM, and SIGUSR1 with sbatch --signal=USR1@90."
        )
    return int(number)


_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
