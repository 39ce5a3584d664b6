"""What ``self.log`` records: step values, epoch accumulators weighted by batch size, and their reduction across ranks.

An epoch mean is ``sum(value x batch_size) / sum(batch_size)``; with ``sync_dist`` both sums are
all-reduced first, so batches of different sizes and ranks with different numbers of samples
(evaluation loaders split without padding) count each sample exactly once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric

REDUCE_FX = ("mean", "sum", "max", "min")


@dataclass
class _Metric:
    name: str
    on_step: bool
    on_epoch: bool
    prog_bar: bool
    logger: bool
    reduce_fx: str
    sync_dist: bool
    total: torch.Tensor | None = None  # sum of value x weight (mean), sum (sum), running max/min
    weight: float = 0.0
    step_value: torch.Tensor | None = None
    fresh_step: bool = False
    torchmetric: Any = None  # a torchmetrics.Metric logged as the value: its compute() is the epoch value
    computed: float | None = None  # its compute() when its evaluation loader finished (Lightning's moment)
    attribute: str = ""  # where the module holds it ("val_acc", "metrics.mae"): a rank that never logged it finds it there
    suffix: str = ""  # "/dataloader_idx_<i>" when one of several evaluation loaders logged it (part of ``name``)

    def forked(self, kind: str) -> str:
        """The name of its step or epoch value, Lightning's way: ``loss_step``, ``val_loss_epoch/dataloader_idx_1``."""
        base = self.name[: len(self.name) - len(self.suffix)] if self.suffix else self.name
        return f"{base}_{kind}{self.suffix}"

    @property
    def step_name(self) -> str:
        """The name its per-step value is logged under (forked only when it has an epoch value too)."""
        return self.forked("step") if self.on_epoch else self.name

    def update(self, value: torch.Tensor, batch_size: int) -> None:
        value = value.detach().to(torch.float64)
        self.step_value = value
        self.fresh_step = True
        if not self.on_epoch:
            return
        if self.total is None:
            self.total = torch.zeros((), dtype=torch.float64, device=value.device)
            if self.reduce_fx in ("max", "min"):
                self.total = value.clone()
        if self.reduce_fx == "mean":
            self.total = self.total + value * batch_size
        elif self.reduce_fx == "sum":
            self.total = self.total + value
        elif self.reduce_fx == "max":
            self.total = torch.maximum(self.total, value)
        else:
            self.total = torch.minimum(self.total, value)
        self.weight += batch_size


def batch_size_of(batch: Any) -> int:
    """The length of the first tensor found in ``batch`` (1 if there is none), like Lightning's guess."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    if isinstance(batch, dict):
        for value in batch.values():
            return batch_size_of(value)
    if isinstance(batch, (list, tuple)):
        for value in batch:
            return batch_size_of(value)
    return 1


class Results:
    """The metrics of the running loop (one instance per fit / validate / test call, reset per epoch)."""

    def __init__(self, fabric: Fabric, callback_metrics: dict[str, torch.Tensor]) -> None:
        self.fabric = fabric
        self.callback_metrics = callback_metrics  # the Trainer's: what callbacks (checkpoint, early stopping) read
        self.stage = "train"
        self.hook = "training_step"
        self.batch: Any = None
        self._metrics: dict[str, dict[str, _Metric]] = {}
        self.enabled = True
        self.suffix = ""  # "/dataloader_idx_<i>" while one of several evaluation loaders runs
        self.module: Any = None  # the LightningModule (its torchmetrics attributes), set when a run attaches it
        self._metric_paths: dict[int, str] = {}
        # Evaluation batches logged so far per (stage, loader): the step of their per-step values (Lightning's count)
        self.eval_steps: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------------------ recording
    def log(
        self, name: str, value: Any, *, prog_bar: bool, logger: bool, on_step: bool | None, on_epoch: bool | None,
        reduce_fx: Any, sync_dist: bool, batch_size: int | None, add_dataloader_idx: bool = True, rank_zero_only: bool = False,
        metric_attribute: str | None = None,
    ) -> None:
        if not self.enabled:
            return
        if self.hook in ("predict_step",) or self.stage == "predict":
            raise UsageError(
                f"self.log({name!r}, ...) was called in {self.hook}, but prediction records no metrics. "
                f"Fix: return the values from predict_step instead."
            )
        reduce_fx = _reduction_name(name, reduce_fx)
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise ConfigurationError(
                f"self.log({name!r}, ...): the name already holds '/dataloader_idx_', which the Trainer adds itself when "
                f"several evaluation loaders run. Fix: log the plain name, or pass add_dataloader_idx=False."
            )
        in_step = self.hook.endswith("_step") or self.hook.endswith("batch_start") or self.hook.endswith("batch_end") or self.hook in (
            "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")
        if on_step is None:
            on_step = self.stage == "train" and in_step
        if on_epoch is None:
            on_epoch = not (self.stage == "train" and in_step)
        if on_step and not in_step:
            raise UsageError(
                f"self.log({name!r}, on_step=True) was called in {self.hook}, which runs once per epoch, not per step. "
                f"Fix: use on_step=False, on_epoch=True there."
            )
        torchmetric = _torchmetric(name, value)
        tensor = None if torchmetric is not None else _to_tensor(name, value, self.fabric.device)
        suffix = self.suffix if add_dataloader_idx else ""
        name = name + suffix
        if batch_size is None:
            batch_size = batch_size_of(self.batch) if in_step else 1
        # rank_zero_only: only rank 0 makes this call, so it must never join a collective
        sync_dist = sync_dist and not rank_zero_only
        stage_metrics = self._metrics.setdefault(self.stage, {})
        metric = stage_metrics.get(name)
        if metric is None:
            metric = stage_metrics[name] = _Metric(name, on_step, on_epoch, prog_bar, logger, reduce_fx, sync_dist,
                                                   suffix=suffix)
        metric.on_step, metric.on_epoch = metric.on_step or on_step, metric.on_epoch or on_epoch
        if torchmetric is not None:
            metric.torchmetric = torchmetric
            metric.attribute = metric_attribute or self._attribute_of(name, torchmetric)
            metric.fresh_step = True
            cache = getattr(torchmetric, "_forward_cache", None)  # the value of the last metric(preds, target) call
            metric.step_value = _to_tensor(name, cache, self.fabric.device) if isinstance(cache, torch.Tensor) else None
            return
        metric.update(tensor, batch_size)

    # ------------------------------------------------------------------------------ reading
    def step_values(self, *, sync: bool) -> tuple[dict[str, float], dict[str, float]]:
        """Fresh per-step values of the current stage: (for loggers, for the progress bar); marks them read.

        ``sync``: all-reduce ``sync_dist`` values (only where every rank runs the same steps: training).
        """
        logged: dict[str, float] = {}
        bar: dict[str, float] = {}
        for metric in self._fresh_steps():
            value = metric.step_value
            if sync and metric.sync_dist and metric.torchmetric is None and self.fabric.world_size > 1:
                value = self.fabric.all_reduce(value.float(), reduce_op=_collective(metric.reduce_fx)).double()
            metric.fresh_step = False
            name = metric.step_name
            number = float(value)
            self.callback_metrics[name] = torch.tensor(number)
            self.callback_metrics.setdefault(metric.name, torch.tensor(number))
            if not metric.on_epoch:
                self.callback_metrics[metric.name] = torch.tensor(number)
            if metric.logger:
                logged[name] = number
            if metric.prog_bar:
                bar[name] = number
        return logged, bar

    def eval_step_values(self) -> dict[str, float]:
        """Fresh per-step values of the running evaluation for the loggers (not synced: ranks run uneven batches)."""
        logged: dict[str, float] = {}
        for metric in self._fresh_steps():
            metric.fresh_step = False
            if metric.logger:
                logged[metric.step_name] = float(metric.step_value)
        return logged

    def _fresh_steps(self) -> list[_Metric]:
        """The current stage's ``on_step`` metrics with a value not read yet."""
        return [m for m in self._metrics.get(self.stage, {}).values() if m.on_step and m.fresh_step and m.step_value is not None]

    def epoch_values(self, *, stage: str | None = None, suffix: str = "") -> tuple[dict[str, float], dict[str, float]]:
        """Reduce the epoch accumulators of ``stage``: (for loggers, for the progress bar). Collective when sync_dist."""
        stage = stage or self.stage
        metrics = self._metrics.get(stage, {})
        names = sorted(name for name, metric in metrics.items() if metric.on_epoch and metric.sync_dist and metric.torchmetric is None)
        if self.fabric.world_size > 1 and stage != "train":
            # Evaluation loaders are split without padding: a rank may have seen no batch and so know no
            # name. Rank 0's list (it sees the most batches) decides which collectives every rank joins.
            names = self.fabric.broadcast(names, src=0)
        logged: dict[str, float] = {}
        bar: dict[str, float] = {}
        for name in names:
            metric = metrics.get(name)
            value = _reduce_synced(self.fabric, metric)
            metric = metric or _Metric(name, False, True, False, True, "mean", True)
            _store(logged, bar, self.callback_metrics, metric, value, suffix)
        for name, metric in metrics.items():
            if metric.on_epoch and not metric.sync_dist and metric.total is not None:
                value = float(metric.total / metric.weight) if metric.reduce_fx == "mean" else float(metric.total)
                _store(logged, bar, self.callback_metrics, metric, value, suffix)
        # torchmetrics objects: compute() syncs their states across processes itself (a collective under
        # torch.distributed), so every rank computes them, in the same (sorted) order.
        for name in self._agreed_torchmetrics(stage):
            metric = self._metrics[stage][name]
            value = metric.computed if metric.computed is not None else _compute(metric)
            _store(logged, bar, self.callback_metrics, metric, value, suffix)
        return logged, bar

    def finish_loader(self) -> None:
        """One of several evaluation loaders is done: compute its torchmetrics objects now, as Lightning does when
        the loader changes (a metric object shared by the loaders then holds this loader's value and the ones before)."""
        for name in self._agreed_torchmetrics(self.stage, self.suffix):
            metric = self._metrics[self.stage][name]
            if metric.computed is None:
                metric.computed = _compute(metric)

    def _agreed_torchmetrics(self, stage: str, suffix: str | None = None) -> list[str]:
        """The torchmetrics entries of ``stage`` to compute, the same list on every rank, sorted.

        Evaluation loaders are split without padding, so a rank may have run no batch and never logged a
        metric that the others compute (a collective): rank 0's list decides, and a rank that lacks an entry
        takes the metric object from the module attribute rank 0 names.
        """
        metrics = self._metrics.setdefault(stage, {})
        names = sorted(n for n, m in metrics.items() if m.torchmetric is not None and m.on_epoch and (suffix is None or n.endswith(suffix)))
        if self.fabric.world_size == 1 or stage == "train":
            return names
        specs = [(n, metrics[n].attribute, metrics[n].on_step, metrics[n].prog_bar, metrics[n].logger, metrics[n].suffix)
                 for n in names]
        specs = self.fabric.broadcast(specs, src=0)
        for name, attribute, on_step, prog_bar, logger, suffix in specs:
            if name not in metrics:
                entry = _Metric(name, on_step, True, prog_bar, logger, "mean", False, suffix=suffix)
                entry.torchmetric, entry.attribute = self.module.get_submodule(attribute), attribute
                metrics[name] = entry
        return [spec[0] for spec in specs]

    def _attribute_of(self, name: str, torchmetric: Any) -> str:
        """The module attribute path of a logged metric object (Lightning requires it to be one, and so do we)."""
        if self.module is None:
            return ""
        path = self._metric_paths.get(id(torchmetric))
        if path is None:
            self._metric_paths = {id(m): p for p, m in self.module.named_modules() if m is not self.module}
            path = self._metric_paths.get(id(torchmetric))
        if path is None:
            raise ConfigurationError(
                f"self.log({name!r}, <{type(torchmetric).__name__}>): the metric object is not an attribute of the "
                f"LightningModule, so the Trainer cannot find it again (checkpoints, ranks that saw no batch). Fix: set it "
                f"as an attribute in __init__ (self.acc = Accuracy(...)) and log that, or pass metric_attribute='<name>'."
            )
        return path

    def reset(self, stage: str | None = None) -> None:
        """Forget the stage's values; torchmetrics objects logged in it are reset (their epoch is over)."""
        for metric in self._metrics.pop(stage or self.stage, {}).values():
            if metric.torchmetric is not None:
                metric.torchmetric.reset()


def _store(
    logged: dict[str, float], bar: dict[str, float], callback: dict[str, torch.Tensor], metric: _Metric,
    value: float | None, suffix: str,
) -> None:
    if value is None:
        return
    name = (metric.forked("epoch") if metric.on_step else metric.name) + suffix
    callback[name] = torch.tensor(value)
    callback[metric.name + suffix] = torch.tensor(value)
    if metric.logger:
        logged[name] = value
    if metric.prog_bar:
        bar[name] = value


def _reduce_synced(fabric: Fabric, metric: _Metric | None) -> float | None:
    if metric is None or metric.total is None:
        # This rank saw no batch: contribute nothing (zero weight; the identity of max/min).
        reduce_fx = "mean"
        total, weight = torch.zeros((), dtype=torch.float64), 0.0
    else:
        reduce_fx, total, weight = metric.reduce_fx, metric.total.detach().cpu(), metric.weight
    if fabric.world_size == 1:
        if weight == 0:
            return None
        return float(total / weight) if reduce_fx == "mean" else float(total)
    if reduce_fx in ("mean", "sum"):
        pair = torch.stack([total, torch.tensor(weight, dtype=torch.float64)]).to(fabric.device)
        total_all, weight_all = fabric.all_reduce(pair, reduce_op="sum").tolist()
        if weight_all == 0:
            return None
        return total_all / weight_all if reduce_fx == "mean" else total_all
    empty = float("-inf") if reduce_fx == "max" else float("inf")
    local = total if weight else torch.tensor(empty, dtype=torch.float64)
    return float(fabric.all_reduce(local.to(fabric.device), reduce_op=reduce_fx))


def _reduction_name(name: str, reduce_fx: Any) -> str:
    """``reduce_fx`` as one of REDUCE_FX: the name itself, or the torch / builtin function Lightning users pass."""
    functions = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min", sum: "sum", max: "max", min: "min"}
    if not isinstance(reduce_fx, str):
        reduce_fx = functions.get(reduce_fx, reduce_fx)
    if reduce_fx not in REDUCE_FX:
        raise ConfigurationError(
            f"self.log({name!r}, reduce_fx={reduce_fx!r}) is not a known reduction. Choose one of: {', '.join(REDUCE_FX)} "
            f"(or torch.mean, torch.sum, torch.max, torch.min)."
        )
    return reduce_fx


def _torchmetric(name: str, value: Any) -> Any:
    """``value`` if it is a ``torchmetrics.Metric`` (None otherwise); a MetricCollection is refused with the fix."""
    torchmetrics = sys.modules.get("torchmetrics")  # a Metric object exists only if torchmetrics was imported
    if torchmetrics is None:
        return None
    if isinstance(value, torchmetrics.MetricCollection):
        raise ConfigurationError(
            f"self.log({name!r}, <MetricCollection>): self.log takes one value. Fix: self.log_dict(collection), which "
            f"logs each of its metrics under its own name."
        )
    return value if isinstance(value, torchmetrics.Metric) else None


def _compute(metric: _Metric) -> float:
    """The epoch value of a logged torchmetrics object: its ``compute()``, on every rank (it may be a collective)."""
    torchmetric = metric.torchmetric
    value = torchmetric.compute()
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigurationError(
            f"self.log({metric.name!r}, {type(torchmetric).__name__}): its compute() returned {shape}, but a logged value "
            f"is one number. Fix: log a metric that computes a scalar (e.g. average='micro'), or log its elements one by one."
        )
    return float(value)


def _collective(reduce_fx: str) -> str:
    return "mean" if reduce_fx == "mean" else reduce_fx


def _to_tensor(name: str, value: Any, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigurationError(
                f"self.log({name!r}, <tensor of shape {tuple(value.shape)}>): a logged value is one number. "
                f"Fix: log a reduction such as value.mean(), or one name per element."
            )
        return value.detach().reshape(())
    if isinstance(value, (int, float, bool)):
        return torch.tensor(float(value), device=device)
    raise ConfigurationError(
        f"self.log({name!r}, {type(value).__name__}) cannot be logged: a value must be a number or a one-element tensor. "
        f"Fix: log float(...) of it, or a tensor."
    )
