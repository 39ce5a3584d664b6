"""fabric_lite: keep your PyTorch loop, add a few lines, run it on any device, precision or number of processes.

Public re-exports only. Heavy optional packages (deepspeed, torch_xla, tensorboardX) are never
imported here.
"""

from fabric_lite.__about__ import __version__
from fabric_lite.fabric import Fabric
from fabric_lite.utilities.seed import seed_everything
from fabric_lite.wrappers import is_wrapped

__all__ = ["Fabric", "__version__", "is_wrapped", "seed_everything"]
