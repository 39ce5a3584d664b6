"""``python -m fabric_lite.cli ...`` is ``fabric-run ...``."""

import sys

from fabric_lite.cli import main

sys.exit(main())
