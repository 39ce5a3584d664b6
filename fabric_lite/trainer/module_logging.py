"""``self.log`` / ``self.log_dict`` of a LightningModule: Lightning's signatures, unknown keywords refused.

The values go to the running Trainer's results (``trainer.state.results``); outside a run a call does nothing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer

#: the keyword arguments of ``self.log`` and ``self.log_dict``, in their signatures' order (named in the error)
_LOG_ARGUMENTS = ("name", "value", "prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "enable_graph", "sync_dist",
                  "sync_dist_group", "add_dataloader_idx", "batch_size", "metric_attribute", "rank_zero_only")
_LOG_DICT_ARGUMENTS = ("dictionary", "prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "enable_graph", "sync_dist",
                       "sync_dist_group", "add_dataloader_idx", "batch_size", "rank_zero_only")


def _refuse_unknown_keywords(call: str, unknown: dict[str, Any], valid: tuple[str, ...]) -> NoReturn:
    """The TypeError of a logging call given keywords Lightning's signature does not have, listing the valid ones."""
    raise TypeError(
        f"{call} got unknown keyword argument(s) {', '.join(map(repr, sorted(unknown)))}. "
        f"Fix: use only Lightning's arguments: {', '.join(valid)}."
    )


class LoggingMixin:
    """``log`` and ``log_dict`` of :class:`~fabric_lite.trainer.LightningModule` (which sets ``_trainer``)."""

    if TYPE_CHECKING:
        _trainer: Trainer | None

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
        **unknown: Any,
    ) -> None:
        """Record a metric: per step (``on_step``), reduced over the epoch (``on_epoch``, weighted by ``batch_size``).

        Lightning 2.x's signature. ``value`` is a number, a one-element tensor or a ``torchmetrics.Metric``
        (its forward value per step; ``compute()`` at the epoch end, then ``reset()``; the metric syncs
        itself across processes). Defaults follow Lightning: ``training_step`` logs per step, evaluation steps
        and epoch-end hooks per epoch. ``sync_dist=True`` reduces numbers across processes (epoch values:
        sums of value x batch size and of batch sizes, so each sample counts once). ``rank_zero_only=True``:
        a value only rank 0 logs, never synced. ``enable_graph``, ``sync_dist_group`` are accepted for compatibility
        (values are detached; sync uses the whole world). A metric object must be an attribute of the module
        (as in Lightning), or ``metric_attribute`` names where it is. Outside a run the
        call does nothing. An unknown keyword raises TypeError listing the valid ones.
        """
        if unknown:
            _refuse_unknown_keywords(f"self.log({name!r}, ...)", unknown, _LOG_ARGUMENTS)
        if self._trainer is None:
            return
        self._trainer.state.results.log(
            name, value, prog_bar=prog_bar, logger=True if logger is None else logger, on_step=on_step, on_epoch=on_epoch,
            reduce_fx=reduce_fx, sync_dist=sync_dist, batch_size=batch_size, add_dataloader_idx=add_dataloader_idx,
            rank_zero_only=rank_zero_only, metric_attribute=metric_attribute,
        )

    def log_dict(
        self,
        dictionary: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
        **unknown: Any,
    ) -> None:
        """``self.log`` for each item of ``dictionary`` (a mapping or a ``torchmetrics.MetricCollection``) with the same options."""
        if unknown:
            _refuse_unknown_keywords("self.log_dict(...)", unknown, _LOG_DICT_ARGUMENTS)
        torchmetrics = sys.modules.get("torchmetrics")  # a MetricCollection exists only if torchmetrics was imported
        if torchmetrics is not None and isinstance(dictionary, torchmetrics.MetricCollection):
            # the member metrics themselves (not copies), so that compute / reset act on the state they accumulate
            items = list(dictionary.items(keep_base=False, copy_state=False))
        else:
            items = list(dictionary.items())
        for name, value in items:
            self.log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
                     enable_graph=enable_graph, sync_dist=sync_dist, sync_dist_group=sync_dist_group,
                     add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, rank_zero_only=rank_zero_only)
