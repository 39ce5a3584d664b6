"""The command lines that start a script on N CPU processes under each launcher (shared by tests and scripts)."""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(launcher: str, script: str, *script_args: str, devices: int = 2) -> list[str]:
    py = sys.executable
    if launcher == "subprocess":
        return [py, script, *script_args, "--strategy", "ddp", "--devices", str(devices)]
    if launcher in ("spawn", "fork"):
        return [py, script, *script_args, "--strategy", f"ddp_{launcher}", "--devices", str(devices)]
    if launcher == "fabric-run":
        return [py, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", str(devices), script, *script_args]
    if launcher == "torchrun":
        return [py, "-m", "torch.distributed.run", f"--nproc-per-node={devices}", f"--master-port={free_port()}",
                script, *script_args]
    raise ValueError(launcher)


LAUNCHERS = ("subprocess", "spawn", "fork", "fabric-run", "torchrun")
