"""SimpleProfiler: wall-clock durations per action; the report is a table of mean, calls, total and share of the run."""

from __future__ import annotations

import os
import time
from collections import defaultdict

from fabric_lite.trainer.profilers.base import Profiler


class SimpleProfiler(Profiler):
    """Time each action with ``time.monotonic``.

    Args:
        dirpath, filename: where the report goes (see :class:`~fabric_lite.trainer.profilers.Profiler`).
        extended: the table with the number of calls, total time and percentage of the whole run (default);
            False: mean and total only.

    Actions may nest (``training_step`` runs inside ``optimizer_step``), including under the same name; the
    percentage is of the time since the profiler was made (or since the last report), so nested rows add
    up to more than 100 %.
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None, extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        # start times of the running actions; None: still running when a report was made (its stop is not recorded)
        self.current_actions: dict[str, list[float | None]] = defaultdict(list)
        self.recorded_durations: dict[str, list[float]] = defaultdict(list)
        self.start_time = time.monotonic()

    def start(self, action_name: str) -> None:
        self.current_actions[action_name].append(time.monotonic())

    def stop(self, action_name: str) -> None:
        started = self.current_actions.get(action_name)
        if not started:
            raise ValueError(f"SimpleProfiler.stop({action_name!r}): that action was never started. Fix: call start({action_name!r}) first.")
        began = started.pop()
        if began is not None:
            self.recorded_durations[action_name].append(time.monotonic() - began)

    def _report(self) -> tuple[list[tuple[str, float, int, float, float]], int, float]:
        elapsed = max(time.monotonic() - self.start_time, 1e-12)
        rows = []
        for action, durations in self.recorded_durations.items():
            total = sum(durations)
            rows.append((action, total / len(durations), len(durations), total, 100.0 * total / elapsed))
        rows.sort(key=lambda row: row[3], reverse=True)
        return rows, sum(row[2] for row in rows), elapsed

    def summary(self) -> str:
        if not self.recorded_durations:
            return ""
        rows, calls, elapsed = self._report()
        title = f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"
        width = max(len("Action"), *(len(row[0]) for row in rows))
        if self.extended:
            header = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            body = [("Total", "-", str(calls), f"{elapsed:.5g}", "100 %")]
            body += [(a, f"{m:.5g}", str(n), f"{t:.5g}", f"{p:.5g}") for a, m, n, t, p in rows]
        else:
            header = ("Action", "Mean duration (s)", "Total time (s)")
            body = [(a, f"{m:.5g}", f"{t:.5g}") for a, m, _, t, _ in rows]

        def line(cells: tuple[str, ...]) -> str:
            return "|  " + cells[0].ljust(width) + "".join(f"  |  {c:<17}" for c in cells[1:]) + "  |"

        rule = "-" * len(line(header))
        out = [title, "", rule, line(header), rule]
        if self.extended:
            out += [line(body[0]), rule]
            body = body[1:]
        out += [line(cells) for cells in body] + [rule]
        return os.linesep.join(out)

    def teardown(self, stage: str | None) -> None:
        # The next run's report starts afresh (each stage's file holds its own run).
        self.recorded_durations.clear()
        for started in self.current_actions.values():
            started[:] = [None] * len(started)
        self.start_time = time.monotonic()
