"""Lightning's import path ``lightning.pytorch.utilities.model_summary``: the summary lives in ``fabric_lite.trainer.model_summary``."""

from fabric_lite.trainer.model_summary import ModelSummary, get_human_readable_count, summarize

__all__ = ["ModelSummary", "get_human_readable_count", "summarize"]
