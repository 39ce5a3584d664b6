"""PyTorchProfiler: ``torch.profiler`` over the run, each action a ``record_function`` range; a Chrome trace and an op table.

The trace (``<dirpath>/<stage>[-<filename>][-<rank>].pt.trace.json``, Chrome's trace-event format with a
``traceEvents`` list) opens in Perfetto (ui.perfetto.dev), ``chrome://tracing`` and TensorBoard's profile
plugin; the report is ``key_averages().table(...)``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fabric_lite.trainer.profilers.base import Profiler


class PyTorchProfiler(Profiler):
    """Record operators (CPU, and CUDA when available) with :mod:`torch.profiler` from the first action to the report.

    Args:
        dirpath, filename: where the report and the trace go (see :class:`~fabric_lite.trainer.profilers.Profiler`).
        group_by_input_shapes: table rows per (operator, input shapes); records shapes.
        emit_nvtx: mark ranges for NVIDIA Nsight (``torch.autograd.profiler.emit_nvtx``) instead of profiling.
        export_to_chrome: write the Chrome trace file (default True).
        row_limit: rows of the table (-1: all).
        sort_by_key: the table's sort column (default ``cuda_time_total`` with CUDA, else ``cpu_time_total``).
        record_module_names: a range per sub-module call (``[module]Linear: layer``) in the trace.
        table_kwargs: more arguments of ``key_averages().table``.
        **profiler_kwargs: more arguments of ``torch.profiler.profile`` (``profile_memory=True``, ``with_stack=True``,
            ``schedule=...``).

    Without a ``schedule`` the whole run is recorded (one trace and one table per run). Events pile up with
    every step, so for long runs pass ``schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1)``
    (Lightning's default window): each step (``training_step``, ``validation_step``, ...) advances it, every
    finished window is written as ``<stage>[-<filename>]-cycle<i>.pt.trace.json`` and the table is of the last one.
    """

    #: the actions that end a step of a ``schedule``
    STEP_ACTIONS = ("training_step", "validation_step", "test_step", "predict_step")

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self._group_by_input_shapes = group_by_input_shapes
        self._emit_nvtx = emit_nvtx
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._sort_by_key = sort_by_key or ("cuda_time_total" if torch.cuda.is_available() else "cpu_time_total")
        self._record_module_names = record_module_names
        self._table_kwargs = dict(table_kwargs or {})
        self._schedule = profiler_kwargs.pop("schedule", None)
        self._profiler_kwargs = profiler_kwargs
        self._profiler: Any = None
        self._cycles = 0
        self._last_averages: Any = None
        self._ranges: dict[str, list[Any]] = {}
        self._module_hooks: list[Any] = []
        #: the Chrome trace written last (None before); every one written is in ``trace_paths``
        self.trace_path: str | None = None
        self.trace_paths: list[str] = []

    def _activities(self) -> list[Any]:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        return activities

    def _ensure_started(self) -> None:
        if self._profiler is not None:
            return
        if self._emit_nvtx:
            self._profiler = torch.autograd.profiler.emit_nvtx(record_shapes=self._group_by_input_shapes)
        else:
            kwargs = {"activities": self._activities(), "record_shapes": self._group_by_input_shapes, **self._profiler_kwargs}
            if self._schedule is not None:
                kwargs.update(schedule=self._schedule, on_trace_ready=self._window_ready)
            self._profiler = torch.profiler.profile(**kwargs)
        self._profiler.__enter__()

    def start(self, action_name: str) -> None:
        self._ensure_started()
        scope = torch.profiler.record_function(action_name)
        scope.__enter__()
        self._ranges.setdefault(action_name, []).append(scope)

    def stop(self, action_name: str) -> None:
        scopes = self._ranges.get(action_name)
        if not scopes:
            raise ValueError(f"PyTorchProfiler.stop({action_name!r}): that action was never started. Fix: call start({action_name!r}) first.")
        scope = scopes.pop()
        if scope is not None:  # None: the range was closed by a report while the action ran
            scope.__exit__(None, None, None)
            if self._schedule is not None and action_name in self.STEP_ACTIONS and self._profiler is not None:
                self._profiler.step()

    def _write_trace(self, profiler: Any, extension: str) -> None:
        directory = self.dirpath or os.getcwd()
        os.makedirs(directory, exist_ok=True)
        self.trace_path = os.path.join(directory, self._prepare_filename(extension=extension))
        profiler.export_chrome_trace(self.trace_path)
        self.trace_paths.append(self.trace_path)

    def _window_ready(self, profiler: Any) -> None:
        # torch calls this at the end of each recorded window of the schedule
        if self._export_to_chrome:
            self._write_trace(profiler, f"-cycle{self._cycles}.pt.trace.json")
        self._last_averages = profiler.key_averages(group_by_input_shape=self._group_by_input_shapes)
        self._cycles += 1

    def register_module_names(self, model: nn.Module) -> None:
        """A ``record_function`` range around every sub-module's forward (``record_module_names=True``)."""
        if not self._record_module_names or self._module_hooks:
            return
        for name, module in model.named_modules():
            if not name:
                continue
            label = f"[module]{type(module).__name__}: {name}"

            def pre(_module: nn.Module, _args: Any, _label: str = label) -> None:
                self.start(_label)

            def post(_module: nn.Module, _args: Any, _output: Any, _label: str = label) -> None:
                if self._ranges.get(_label):
                    self.stop(_label)

            self._module_hooks.append(module.register_forward_pre_hook(pre))
            self._module_hooks.append(module.register_forward_hook(post))

    def _finish(self) -> Any:
        profiler, self._profiler = self._profiler, None
        for scopes in self._ranges.values():
            for index, scope in enumerate(scopes):
                if scope is not None:
                    scope.__exit__(None, None, None)
                    scopes[index] = None
        if profiler is not None:
            profiler.__exit__(None, None, None)
        return profiler

    def summary(self) -> str:
        profiler = self._finish()  # with a schedule, a window still recording is closed (and written) here
        if profiler is None or self._emit_nvtx:
            return ""
        if self._schedule is not None:
            averages, self._last_averages, self._cycles = self._last_averages, None, 0
            if averages is None:
                return ""  # the run ended before the schedule's first recorded step
        else:
            if self._export_to_chrome:
                self._write_trace(profiler, ".pt.trace.json")
            averages = profiler.key_averages(group_by_input_shape=self._group_by_input_shapes)
        table = averages.table(sort_by=self._sort_by_key, row_limit=self._row_limit, **self._table_kwargs)
        title = f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"
        return f"{title}{os.linesep}{table}"

    def teardown(self, stage: str | None) -> None:
        self._finish()
        for handle in self._module_hooks:
            handle.remove()
        self._module_hooks = []
