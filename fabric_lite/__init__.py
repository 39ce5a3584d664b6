"""fabric_lite: keep your PyTorch loop, add a few lines, run it on any device, precision or number of processes.

Public re-exports only. Heavy optional packages (deepspeed, torch_xla, tensorboardX) are never
imported here.
"""

import fabric_lite.__about__ as about
from fabric_lite.fabric import Fabric
from fabric_lite.utilities.seed import seed_everything
from fabric_lite.wrappers import is_wrapped

__version__ = about.__version__
del about

__all__ = ["Fabric", "__version__", "is_wrapped", "seed_everything"]
