"""Lightning's ``lightning.pytorch.utilities`` names that user code imports (``CombinedLoader``)."""

from fabric_lite.trainer.combined_loader import CombinedLoader

__all__ = ["CombinedLoader"]
