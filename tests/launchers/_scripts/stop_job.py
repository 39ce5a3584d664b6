"""A 2-rank job for stop and failure tests. Every process writes its pid to OUT/pid<rank> (atomically).

--where collective:  rank 1 never reaches the all_reduce that rank 0 waits in.
--where rendezvous:  rank 1 never calls Fabric(...), so rank 0 waits in the rendezvous (subprocess launcher only).
--where early-exit:  rank 1 leaves (exit code 0) while rank 0 waits for it in an all_reduce.
--where no-join:     rank 1 exits with code 0 before Fabric(...) (subprocess launcher only).
--where finish:      both ranks do one all_reduce and end normally.
--where hidden-exit: rank 1 exits with code 0, but a process it forked keeps its sockets open for 20 s, so rank 0
                     sees no closed connection and its all_reduce times out (set FABRIC_LITE_COLLECTIVE_TIMEOUT);
                     the forked process writes its pid to OUT/grandchild.
"""

import argparse
import os
import sys
import time
from pathlib import Path


def write_pid(out: Path, rank: int) -> None:
    (out / f".pid{rank}").write_text(str(os.getpid()))
    os.replace(out / f".pid{rank}", out / f"pid{rank}")


def run(fabric, out: Path, where: str) -> None:
    import torch

    write_pid(out, fabric.global_rank)
    if where == "finish":
        fabric.all_reduce(torch.ones(1))
        # Not the last call: a gloo run that ends right after an all_reduce aborts rank 1 at exit now and then
        # (std::terminate in gloo's teardown; seen before this test existed), which is not what this script tests.
        fabric.barrier()
        return
    fabric.barrier()
    if fabric.global_rank == 1:
        if where == "early-exit":
            sys.exit(0)
        if where == "hidden-exit":
            child = os.fork()
            if child == 0:  # holds rank 1's gloo sockets: rank 0 sees no closed connection
                (out / "grandchild").write_text(str(os.getpid()))
                time.sleep(20)
                os._exit(0)
            os._exit(0)
        time.sleep(600)  # never reaches the collective
    if where in ("early-exit", "hidden-exit"):
        time.sleep(0.5)
    fabric.all_reduce(torch.ones(1))
    (out / "joined").write_text("unexpected")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--where", default="collective",
                        choices=["collective", "rendezvous", "early-exit", "no-join", "finish", "hidden-exit"])
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--preemption", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if args.where in ("rendezvous", "no-join") and os.environ.get("LOCAL_RANK") == "1":
        write_pid(out, 1)
        if args.where == "no-join":
            sys.exit(0)
        time.sleep(600)  # never joins
    from fabric_lite import Fabric
    from fabric_lite.plugins import Preemption

    plugins = [Preemption(requeue=False)] if args.preemption else None
    fabric = Fabric(accelerator="cpu", devices=2, strategy=args.strategy, plugins=plugins)
    if fabric.plan.launcher in ("spawn", "fork"):
        fabric.launch(run, out, args.where)
        return
    if args.where in ("rendezvous", "no-join"):
        write_pid(out, 0)
    fabric.launch()
    run(fabric, out, args.where)


if __name__ == "__main__":
    main()
