"""The external launcher: the processes already exist (fabric-run, torchrun, SLURM, our subprocess launcher).

It only prepares the current process: the error file that lets torchrun (or our own launcher)
report the traceback of the rank that failed, and death with the parent when the parent was
fabric_lite's subprocess launcher.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

from fabric_lite.launchers.base import is_peer_lost

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric

#: Set by the subprocess launcher in the processes it starts: the pid of the launching rank 0.
PARENT_PID_VARIABLE = "FABRIC_LITE_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_CONSEQUENCE_DELAY_S = 3.0


class ExternalLauncher:
    is_interactive_compatible = True
    runs_function_in_new_processes = False

    def prepare_process(self) -> None:
        install_error_file_hook()
        die_with_parent()

    def launch(self, function: Callable[..., Any] | None, *args: Any, fabric: Fabric, **kwargs: Any) -> Any:
        fabric._setup_environment()
        return None if function is None else function(fabric, *args, **kwargs)


def install_error_file_hook() -> None:
    """Write an uncaught exception to ``TORCHELASTIC_ERROR_FILE`` (torch's format) so the launcher's
    failure report shows the traceback of the rank that failed first."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or getattr(sys.excepthook, "_fabric_lite", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if is_peer_lost(str(exc)):
            # This rank failed because a peer died. Let the launcher see the peer's exit first (it stops
            # this process then): otherwise both land in the same second and the report may blame us.
            time.sleep(_CONSEQUENCE_DELAY_S)
        try:
            data = {
                "message": {
                    "message": f"{exc_type.__name__}: {exc}",
                    "extraInfo": {
                        "py_callstack": "".join(traceback.format_exception(exc_type, exc, tb)),
                        "timestamp": str(int(time.time())),
                    },
                }
            }
            with open(path, "w") as handle:
                json.dump(data, handle)
        except OSError:
            pass
        previous(exc_type, exc, tb)

    hook._fabric_lite = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def die_with_parent() -> None:
    """In a process our subprocess launcher or torchrun / fabric-run (torch elastic's agent) started: exit when the
    launching process dies, even by SIGKILL. Elastic starts each worker in a session of its own, so a killed agent
    would otherwise leave its workers behind, e.g. blocked for the whole timeout in a rendezvous."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent and os.environ.get("TORCHELASTIC_RUN_ID"):
        parent = str(os.getppid())  # the agent: it made this process and lives as long as the job
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)
