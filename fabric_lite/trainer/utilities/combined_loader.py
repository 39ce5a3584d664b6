"""``from fabric_lite.trainer.utilities.combined_loader import CombinedLoader``: Lightning's import path for it."""

from fabric_lite.trainer.combined_loader import MODES, CombinedLoader

__all__ = ["MODES", "CombinedLoader"]
