"""Run by tests/checkpoint/test_crash_safe.py: kill processes that save checkpoints in a loop, at random moments.

    python crash_saver.py FOLDER SEED single:16 ddp:10 fsdp:6     # strategy:trials, in this order

One driver process imports torch once and forks the savers of each trial (one process, or two ranks
with a gloo group), so a trial costs a fork, not an interpreter start. The savers save step 0, 1, 2, ...
(even steps overwrite ``last``, odd ones write ``step-N``; each trial continues after the newest
checkpoint), and report each step once ``fabric.save`` returned. After a random delay the driver sends
SIGKILL to every saver, then checks that ``latest_checkpoint`` names a checkpoint that loads completely,
holds the values of its step, and is not older than the last step reported. Prints one JSON line.
"""

import json
import os
import random
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fabric_lite import Fabric
from fabric_lite.checkpoint import latest_checkpoint
from fabric_lite.checkpoint.sharded import MARKER, consolidate

SIZE = 1 << 19  # floats per rank's big tensor: 2 MiB, so that a kill often lands inside a write


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def name_of(step, strategy):
    name = "last" if step % 2 == 0 else f"step-{step:04d}"
    return name if strategy == "fsdp" else f"{name}.ckpt"


def saver(folder, strategy, rank, world, port, start, report_fd):
    """A saving process: never returns (os._exit)."""
    try:
        if world > 1:
            os.environ.update({
                "TORCHELASTIC_RUN_ID": "crash", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                "GROUP_RANK": "0",
            })
        fabric = Fabric(accelerator="cpu", strategy=strategy if world > 1 else "auto", devices=world)
        fabric.launch()
        model = nn.Sequential(nn.Linear(SIZE // 64, 64 * world), nn.Linear(64 * world, 8))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = fabric.setup(model, optimizer)
        loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(range(16), batch_size=2, shuffle=True))
        iterator = iter(loader)
        os.write(report_fd, b"ready\n")
        step = start
        while True:
            next(iterator, None)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(float(step))
            fabric.save(folder / name_of(step, strategy), {"model": model, "loader": loader, "step": step})
            if rank == 0:
                os.write(report_fd, f"{step}\n".encode())
            step += 1
    except BaseException as error:  # noqa: BLE001 - reported to the driver, which fails the trial
        os.write(report_fd, f"error {type(error).__name__}: {error}\n".encode())
    finally:
        os._exit(1)


def read_lines(fd):
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


def check(folder, strategy, last_reported, scratch):
    """Load the latest checkpoint completely; return (step, problem or None)."""
    path = latest_checkpoint(folder)
    if path is None:
        return None, None if last_reported is None else f"no checkpoint found although step {last_reported} was saved"
    try:
        if strategy == "fsdp":
            checkpoint = torch.load(consolidate(path, scratch), weights_only=True)  # every shard read
        else:
            checkpoint = Fabric(accelerator="cpu").load(path)
    except Exception as error:  # noqa: BLE001
        return None, f"{path.name} was taken as complete but does not load: {type(error).__name__}: {error}"
    step = checkpoint["step"]
    tensors = list(checkpoint["model"].values())
    if len(tensors) != 4 or not all(torch.all(t == float(step)) for t in tensors):
        return step, f"{path.name} holds tensors that are not all of step {step}"
    if len(checkpoint["loader"]["ranks"]) != (1 if strategy == "single" else 2):
        return step, f"{path.name} lacks a rank's loader state"
    if last_reported is not None and step < last_reported:
        return step, f"{path.name} is step {step}, older than step {last_reported} reported saved"
    return step, None


def leftovers(folder):
    """Hidden files/folders a killed save left (temporary file, unmarked staging folder): evidence of a mid-save kill."""
    found = 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and not (entry.is_dir() and (entry / MARKER).is_file()):
            found += 1
            # Clean up so that each trial counts its own (a later save would clear a staging folder itself).
            entry.unlink() if entry.is_file() else shutil.rmtree(entry)
    return found


def warm_up(scratch):
    """Import here, once, what every saver needs (the first optimizer alone imports torch._dynamo: seconds)."""
    import torch.distributed.checkpoint
    import torch.distributed.fsdp

    import fabric_lite.checkpoint.safe_dcp
    import fabric_lite.strategies.fsdp  # noqa: F401

    fabric = Fabric(accelerator="cpu")
    model, optimizer = fabric.setup(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    fabric.save(scratch, {"model": model, "optimizer": optimizer})
    fabric.load(scratch, {"model": model, "optimizer": optimizer})
    scratch.unlink()


def trials_of(folder, strategy, trials, rng):
    world = 1 if strategy == "single" else 2
    folder.mkdir(parents=True, exist_ok=True)
    result = {"strategy": strategy, "trials": 0, "killed_mid_save": 0, "none_yet": 0, "problems": [], "steps": [],
              "seconds": 0.0}
    began = time.monotonic()
    last_reported, start = None, 0
    for _ in range(trials):
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        port = free_port()
        pids = []
        for rank in range(world):
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                saver(folder, strategy, rank, world, port, start, write_fd)
            pids.append(pid)
        os.close(write_fd)
        deadline, lines = time.monotonic() + 120, []
        while sum(line == "ready" for line in lines) < world and time.monotonic() < deadline:
            time.sleep(0.01)
            lines += read_lines(read_fd)
            if any(line.startswith("error") for line in lines):
                break
        time.sleep(rng.uniform(0.0, 0.4 if world == 1 else 1.0))  # a save takes tens of milliseconds
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)
        lines += read_lines(read_fd)
        os.close(read_fd)
        errors = [line for line in lines if line.startswith("error")]
        if errors:
            result["problems"].append(f"saver failed: {errors[0]}")
            break
        steps = [int(line) for line in lines if line.isdigit()]
        if steps:
            last_reported = steps[-1]
        result["killed_mid_save"] += leftovers(folder) > 0
        step, problem = check(folder, strategy, last_reported, folder.parent / f"{strategy}-consolidated.pt")
        result["trials"] += 1
        result["steps"].append(step)
        if problem:
            result["problems"].append(problem)
        if step is None:
            result["none_yet"] += 1
        else:
            start = step + 1
    result["seconds"] = round(time.monotonic() - began, 1)
    return result


def main():
    root, seed = Path(sys.argv[1]), int(sys.argv[2])
    plan = [(item.split(":")[0], int(item.split(":")[1])) for item in sys.argv[3:]]
    root.mkdir(parents=True, exist_ok=True)
    warm_up(root / ".warm-up.ckpt")
    rng = random.Random(seed)
    for strategy, trials in plan:
        print(json.dumps(trials_of(root / strategy, strategy, trials, rng)), flush=True)


if __name__ == "__main__":
    main()
