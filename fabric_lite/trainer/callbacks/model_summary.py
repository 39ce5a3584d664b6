"""ModelSummary / RichModelSummary: log the model's layer table at the start of ``fit`` (rank 0 only).

``Trainer(enable_model_summary=True)`` (the default) adds ``ModelSummary(max_depth=1)`` unless one is passed.
The plain table goes through the ``fabric_lite`` logger at INFO (stderr by default, as Lightning's does);
the rich one is printed by a ``rich`` console.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.model_summary import ModelSummary as Summary
from fabric_lite.trainer.model_summary import check_max_depth, summarize
from fabric_lite.utilities.rank_zero import rank_zero_info

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


class ModelSummary(Callback):
    """Log a summary of the LightningModule when ``fit`` starts.

    Args:
        max_depth: how deep into sub-modules the table goes (``1``: direct children, ``-1``: every layer,
            ``0``: no summary).

    Example:
        >>> ModelSummary(max_depth=2).max_depth
        2
    """

    #: keyword arguments of the drawing this class understands (RichModelSummary: header_style)
    SUMMARIZE_KWARGS: tuple[str, ...] = ()

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        check_max_depth(max_depth)  # now, not at fit start
        unknown = sorted(set(summarize_kwargs) - set(self.SUMMARIZE_KWARGS))
        if unknown:
            known = ", ".join(self.SUMMARIZE_KWARGS) or "none besides max_depth"
            raise ConfigurationError(
                f"{type(self).__name__}({', '.join(k + '=...' for k in unknown)}) got argument(s) it does not use. "
                f"Fix: drop them (it takes: {known})."
            )
        self.max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or self.max_depth == 0:
            return
        self.summarize(summarize(pl_module, max_depth=self.max_depth))

    def summarize(self, summary: Summary) -> None:
        """Show ``summary`` (override to send it elsewhere)."""
        rank_zero_info("\n" + str(summary))


class RichModelSummary(ModelSummary):
    """The same summary drawn as a ``rich`` table (needs ``pip install rich`` or ``torch-fabric-lite[rich]``).

    Args:
        max_depth: as :class:`ModelSummary`.
        console_kwargs: passed to ``rich.console.Console`` (e.g. ``{"file": buffer, "width": 120}``).
        header_style: the ``rich`` style of the header row (default ``"bold magenta"``).
    """

    SUMMARIZE_KWARGS = ("header_style",)

    def __init__(self, max_depth: int = 1, console_kwargs: dict[str, Any] | None = None, **summarize_kwargs: Any) -> None:
        from fabric_lite.trainer.callbacks.rich_progress import require_rich

        require_rich("RichModelSummary")
        super().__init__(max_depth, **summarize_kwargs)
        self.console_kwargs = dict(console_kwargs or {})

    def summarize(self, summary: Summary) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(header_style=self._summarize_kwargs.get("header_style", "bold magenta"))
        columns = summary._columns()
        for title, _ in columns:
            table.add_column(title, justify="right" if title == "Params" else "left")
        for row in range(len(summary.layer_names)):
            table.add_row(*[values[row] for _, values in columns])
        console = Console(**self.console_kwargs)
        if summary.layer_names:
            console.print(table)
        console.print("\n".join(f"[bold]{value}[/bold]{' ' * max(1, 10 - len(value))}{label}" for value, label in summary.footer()))
