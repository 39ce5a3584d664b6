"""Stop signals that reach a rank blocked in native code: SIGTERM / SIGINT end the job even while the main thread
waits inside a collective or the rendezvous.

Python runs a signal handler only in the main thread, between two bytecodes. A rank blocked in a gloo/NCCL call
(a collective, ``init_process_group``'s rendezvous) runs no bytecode until the call returns, which can be the
collective timeout (30 minutes): its handlers (KeyboardInterrupt, torch's SignalException, the Preemption plugin's
flag) wait that long, and only SIGKILL works. The C half of Python's handler still runs at once, in whatever
thread the kernel picked, and writes the signal number to the wake-up fd (``signal.set_wakeup_fd``). A watcher
thread reads it and:

* for a signal whose handler is :meth:`SignalGuard.terminate_handler` (nothing else claimed it): stops the job at
  once (``on_stop``);
* for a signal with another handler that the guard counts (KeyboardInterrupt for SIGINT, the Preemption plugin):
  gives the main thread ``grace_s`` to run it; if it did not, the main thread is stuck in native code and the job
  is stopped anyway;
* for a handler installed after the guard, which it cannot count: leaves the signal to it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

#: How long the main thread has to run the handler of a signal it is meant to handle itself (SIGINT's
#: KeyboardInterrupt, a Preemption plugin's flag): a thread running Python takes milliseconds.
GRACE_S = 1.0
#: The signals that mean "stop the job" (those torch's elastic agent handles).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, name))


class SignalGuard:
    """Make ``signals`` stop the job even while the main thread is blocked in native code.

    Args:
        on_stop: called once, from the watcher thread or the main thread, with the signal number; it must end the
            process (it stops the other ranks first).
        signals: the stop signals to guard.
        grace_s: how long a handler of someone else's gets to run before the job is stopped anyway.
    """

    def __init__(self, on_stop: Callable[[int], None], *, signals: Sequence[int] = STOP_SIGNALS, grace_s: float = GRACE_S) -> None:
        self.on_stop = on_stop
        self.signals = tuple(int(s) for s in signals)
        self.grace_s = grace_s
        self._received = dict.fromkeys(self.signals, 0)
        self._handled = dict.fromkeys(self.signals, 0)
        self._counted: set[Any] = set()
        self._changed = threading.Condition()
        self._once = threading.Lock()
        self._read_fd = -1

    # ------------------------------------------------------------------ installing (main thread)
    def install(self, before: dict[int, Any] | None = None) -> bool:
        """Take over the stop signals. ``before``: the handlers from before someone else replaced them (torch's
        ``start_processes`` installs its agent's). A handler of the user's (or SIGINT's KeyboardInterrupt) stays,
        counted; SIG_IGN stays; a signal left to its default action gets :meth:`terminate_handler`.
        Returns False (nothing changed) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        before = before or {}
        for number in self.signals:
            handler = before.get(number, signal.getsignal(number))
            if handler == signal.SIG_IGN:
                signal.signal(number, signal.SIG_IGN)  # e.g. nohup: the user asked for this signal to be ignored
            elif callable(handler):
                signal.signal(number, self._count(handler))
            else:  # SIG_DFL, or a handler not installed from Python
                signal.signal(number, self.terminate_handler)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:
            previous = -2
        if previous != -1:  # another wake-up fd (an asyncio loop): keep it; handlers still work when not blocked
            if previous != -2:
                signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return True
        self._read_fd = read_fd
        threading.Thread(target=self._watch, name="fabric_lite-signals", daemon=True).start()
        return True

    def count_new_handlers(self) -> None:
        """Count the runs of handlers installed since :meth:`install` (call it from the main thread after
        setting up a rank, which installs the Preemption plugin's handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number in self.signals:
            current = signal.getsignal(number)
            if callable(current) and current != self.terminate_handler and current not in self._counted:
                signal.signal(number, self._count(current))

    def _count(self, handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
        def counted(number: int, frame: Any) -> Any:
            with self._changed:
                self._handled[number] = self._handled.get(number, 0) + 1
                self._changed.notify_all()
            return handler(number, frame)

        self._counted.add(counted)
        return counted

    # ------------------------------------------------------------------ stopping
    def terminate_handler(self, number: int, frame: Any) -> None:
        """The main thread's handler of a stop signal nobody else claimed (it runs when the thread is not blocked)."""
        self.stop(number)

    def stop(self, number: int) -> None:
        """Stop the job because of signal ``number`` (once; a second caller waits for the process to end)."""
        if self._once.acquire(blocking=False):
            self.on_stop(number)
        else:
            threading.Event().wait()  # the first caller is ending the process

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in self._received:
                    with self._changed:
                        self._received[number] += 1
                    threading.Thread(target=self._decide, args=(number,), daemon=True).start()

    def _decide(self, number: int) -> None:
        current = signal.getsignal(number)
        if current == self.terminate_handler:
            self.stop(number)
            return
        if current not in self._counted:
            return  # a handler the guard does not know: it owns the signal
        with self._changed:
            handled = self._changed.wait_for(lambda: self._handled[number] >= self._received[number], self.grace_s)
        if not handled:
            self.stop(number)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
