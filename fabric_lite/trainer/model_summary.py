"""A model summary: one row per layer (name, type, parameters, train/eval mode), then the parameter totals and size.

Lightning's ``lightning.pytorch.utilities.model_summary`` names: :class:`ModelSummary` (the table; ``str()`` it)
and :func:`summarize`. ``Trainer(enable_model_summary=True)`` (the default) logs it at the start of ``fit``
through the :class:`~fabric_lite.trainer.callbacks.ModelSummary` callback.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fabric_lite.errors import ConfigurationError

_UNITS = ("", "K", "M", "B", "T")


def get_human_readable_count(number: int | float) -> str:
    """``123`` -> ``"123"``, ``1234`` -> ``"1.2 K"``, ``2_500_000`` -> ``"2.5 M"`` (Lightning's format).

    Example:
        >>> get_human_readable_count(66), get_human_readable_count(12_345), get_human_readable_count(3e9)
        ('66', '12.3 K', '3.0 B')
    """
    number = float(number)
    index = 0
    while abs(number) >= 1000 and index < len(_UNITS) - 1:
        number /= 1000
        index += 1
    if index == 0:
        return str(int(number))
    return f"{number:,.1f} {_UNITS[index]}"


def _numel(parameter: Any) -> int:
    # A lazy module's parameters have no size until its first forward: they count as 0, as in Lightning.
    if isinstance(parameter, nn.parameter.UninitializedParameter):
        return 0
    # DeepSpeed stage 3 leaves an empty tensor on each rank and keeps the full size in ds_numel; a DTensor
    # (FSDP2) reports its full size itself.
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def _count(parameters: Any) -> int:
    return sum(_numel(p) for p in parameters)


def _shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [_shape(v) for v in value]
    return "?"


def check_max_depth(max_depth: Any) -> None:
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
        raise ConfigurationError(
            f"ModelSummary(max_depth={max_depth!r}) is not a depth. Fix: pass an int >= 0 (0: no table, 1: the "
            f"direct sub-modules) or -1 for every layer."
        )


class ModelSummary:
    """The summary of ``model`` down to ``max_depth`` levels of sub-modules (``-1``: all, ``0``: none).

    When the model has an ``example_input_array``, one forward pass (no gradients, every module's mode kept) fills the
    ``In sizes`` / ``Out sizes`` columns.

    Example:
        >>> summary = ModelSummary(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
        >>> summary.total_parameters, summary.trainable_parameters, summary.layer_names
        (49, 49, ['0', '1', '2'])
    """

    def __init__(self, model: nn.Module, max_depth: int = 1) -> None:
        check_max_depth(max_depth)
        self._model = model
        self._max_depth = max_depth
        self._layers = self._select()
        self._in_sizes: list[Any] = []
        self._out_sizes: list[Any] = []
        if getattr(model, "example_input_array", None) is not None and self._layers:
            self._in_sizes, self._out_sizes = self._trace_sizes(model.example_input_array)

    def _select(self) -> list[tuple[str, nn.Module]]:
        if self._max_depth == 0:
            return []
        found = []
        for name, module in self._model.named_modules():
            if not name:
                continue  # the model itself: its totals are in the footer
            if self._max_depth == -1 or name.count(".") + 1 <= self._max_depth:
                found.append((name, module))
        return found

    def _trace_sizes(self, example: Any) -> tuple[list[Any], list[Any]]:
        ins: dict[str, Any] = {}
        outs: dict[str, Any] = {}
        handles = []
        for name, module in self._layers:
            def hook(_module: nn.Module, args: Any, output: Any, _name: str = name) -> None:
                ins[_name] = _shape(args[0] if len(args) == 1 else list(args))
                outs[_name] = _shape(output)
            handles.append(module.register_forward_hook(hook))
        modes = [(module, module.training) for module in self._model.modules()]  # each its own (frozen parts stay eval)
        try:
            self._model.eval()
            reference = next(self._model.parameters(), torch.empty(0))

            def place(value: Any) -> Any:  # the example on the model's device, floats in its dtype
                if not isinstance(value, torch.Tensor):
                    return value
                return value.to(reference.device, reference.dtype if value.is_floating_point() else None)

            with torch.no_grad():
                if isinstance(example, (list, tuple)):
                    self._model(*[place(e) for e in example])
                elif isinstance(example, dict):
                    self._model(**{k: place(v) for k, v in example.items()})
                else:
                    self._model(place(example))
        finally:
            for module, training in modes:
                module.training = training
            for handle in handles:
                handle.remove()
        return ([ins.get(n, "?") for n, _ in self._layers], [outs.get(n, "?") for n, _ in self._layers])

    # ---------------------------------------------------------------------------------------------- columns
    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        return list(self._layers)

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self._layers]

    @property
    def layer_types(self) -> list[str]:
        return [type(module).__name__ for _, module in self._layers]

    @property
    def param_nums(self) -> list[int]:
        return [_count(module.parameters()) for _, module in self._layers]

    @property
    def training_modes(self) -> list[bool]:
        return [module.training for _, module in self._layers]

    @property
    def in_sizes(self) -> list[Any]:
        return list(self._in_sizes)

    @property
    def out_sizes(self) -> list[Any]:
        return list(self._out_sizes)

    # ---------------------------------------------------------------------------------------------- totals
    @property
    def total_parameters(self) -> int:
        return _count(self._model.parameters())

    @property
    def trainable_parameters(self) -> int:
        return _count(p for p in self._model.parameters() if p.requires_grad)

    @property
    def total_training_modes(self) -> dict[str, int]:
        modules = list(self._model.modules())
        train = sum(1 for m in modules if m.training)
        return {"train": train, "eval": len(modules) - train}

    @property
    def model_size(self) -> float:
        """Megabytes of the parameters in their own dtypes (a bf16 model counts 2 bytes per parameter)."""
        size = sum(_numel(p) * p.element_size() for p in self._model.parameters())
        return size / 1e6

    # ---------------------------------------------------------------------------------------------- text
    def _columns(self) -> list[tuple[str, list[str]]]:
        columns = [
            (" ", [str(i) for i in range(len(self._layers))]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(n) for n in self.param_nums]),
            ("Mode", ["train" if t else "eval" for t in self.training_modes]),
        ]
        if self._in_sizes:
            columns.append(("In sizes", [str(s) for s in self._in_sizes]))
            columns.append(("Out sizes", [str(s) for s in self._out_sizes]))
        return columns

    def footer(self) -> list[tuple[str, str]]:
        """(value, label) rows under the table: parameter counts, size, modules per mode."""
        modes = self.total_training_modes
        return [
            (get_human_readable_count(self.trainable_parameters), "Trainable params"),
            (get_human_readable_count(self.total_parameters - self.trainable_parameters), "Non-trainable params"),
            (get_human_readable_count(self.total_parameters), "Total params"),
            (f"{self.model_size:.3f}", "Total estimated model params size (MB)"),
            (str(modes["train"]), "Modules in train mode"),
            (str(modes["eval"]), "Modules in eval mode"),
        ]

    def __str__(self) -> str:
        lines: list[str] = []
        if self._layers:
            columns = self._columns()
            widths = [max(len(title), *(len(v) for v in values)) for title, values in columns]
            header = " | ".join(title.ljust(w) for (title, _), w in zip(columns, widths))
            rule = "-" * len(header)
            lines += [header, rule]
            for row in range(len(self._layers)):
                lines.append(" | ".join(values[row].ljust(w) for (_, values), w in zip(columns, widths)))
            lines.append(rule)
        lines += [f"{value:<10}{label}" for value, label in self.footer()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def summarize(lightning_module: nn.Module, max_depth: int = 1) -> ModelSummary:
    """The :class:`ModelSummary` of ``lightning_module`` down to ``max_depth`` (Lightning's function)."""
    return ModelSummary(lightning_module, max_depth=max_depth)
