"""AdvancedProfiler: one ``cProfile`` per action; the report is each action's ``pstats`` listing."""

from __future__ import annotations

import cProfile
import io
import os
import pstats

from fabric_lite.trainer.profilers.base import Profiler


class AdvancedProfiler(Profiler):
    """Profile every function call inside each action with :mod:`cProfile`.

    Args:
        dirpath, filename: where the report goes (see :class:`~fabric_lite.trainer.profilers.Profiler`).
        line_count_restriction: rows of each action's listing (an int), or a fraction of them (a float in (0, 1]).
        dump_stats: also write each action's raw stats to ``dirpath/<stage>-<filename>-<action>.prof``
            (open with ``python -m pstats`` or snakeviz).

    Python allows one active ``cProfile`` at a time, so while a nested action runs (``training_step`` inside
    ``optimizer_step``) the outer one pauses: each action's listing holds the calls made directly in it.
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        # the started actions, innermost last; None: still open when a report closed it (its stop is a no-op)
        self._running: list[tuple[str, cProfile.Profile | None]] = []

    def start(self, action_name: str) -> None:
        if self._running and self._running[-1][1] is not None:
            self._running[-1][1].disable()  # type: ignore[union-attr]
        profiler = self.profiled_actions.setdefault(action_name, cProfile.Profile())
        self._running.append((action_name, profiler))
        profiler.enable()

    def stop(self, action_name: str) -> None:
        for index in range(len(self._running) - 1, -1, -1):
            if self._running[index][0] == action_name:
                break
        else:
            raise ValueError(f"AdvancedProfiler.stop({action_name!r}): that action was never started. Fix: call start({action_name!r}) first.")
        was_last = index == len(self._running) - 1
        _, profiler = self._running.pop(index)
        if profiler is None:
            return
        profiler.disable()
        if was_last and self._running and self._running[-1][1] is not None:
            self._running[-1][1].enable()  # type: ignore[union-attr]

    def summary(self) -> str:
        pieces = []
        for action, profiler in self.profiled_actions.items():
            if self.dump_stats:
                directory = self.dirpath or os.getcwd()
                os.makedirs(directory, exist_ok=True)
                profiler.dump_stats(os.path.join(directory, self._prepare_filename(action_name=action, extension=".prof")))
            stream = io.StringIO()
            try:
                stats = pstats.Stats(profiler, stream=stream)
            except TypeError:  # an action that ran no Python function has no stats
                continue
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            pieces.append(f"Profile stats for: {action}{os.linesep}{stream.getvalue()}")
        if not pieces:
            return ""
        title = f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"
        return os.linesep.join([title, *pieces])

    def teardown(self, stage: str | None) -> None:
        for _, profiler in self._running:
            if profiler is not None:
                profiler.disable()
        self._running = [(name, None) for name, _ in self._running]
        self.profiled_actions = {}
