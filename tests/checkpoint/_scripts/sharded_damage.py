"""Run by tests/checkpoint/test_sharded_damage.py: damaged, mismatched and unwritable sharded (FSDP/DCP) checkpoints
on 2 real gloo ranks. Every case records, on every rank, what it raised; one JSON per rank.

    python sharded_damage.py OUT_DIR [--disk FOLDER]     # FOLDER: a small tmpfs to fill (omit to skip those cases)
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from sharded_shared import outcome, values
from torch import nn

from fabric_lite import Fabric
from fabric_lite.checkpoint.sharded import MARKER


def model_of(*widths):
    """Linear layers of the given widths with Tanh between: make(4, 8, 8, 1) has keys 0.*, 2.*, 4.*."""
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


class FailsOnRank1:
    """A stateful object whose state_dict raises on rank 1 only."""

    def __init__(self, rank):
        self.rank = rank

    def state_dict(self):
        if self.rank == 1:
            raise RuntimeError("rank 1 cannot give its state")
        return {}

    def load_state_dict(self, state):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--disk", default=None)
    args = parser.parse_args()
    out = Path(args.out_dir)
    fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=2)
    fabric.launch()
    rank = fabric.global_rank
    r = {"rank": rank}

    def setup(*widths):
        return fabric.setup(model_of(*widths))

    def damage(fn):
        """Rank 0 changes files while rank 1 waits, so both ranks then load the same damaged folder."""
        fabric.barrier()
        if rank == 0:
            fn()
        fabric.barrier()

    model = setup(4, 8, 8, 1)
    optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    ckpt = out / "ckpt"
    fabric.save(ckpt, {"model": model, "optimizer": optimizer, "step": 3})
    saved = values(model)
    r["marker"] = (ckpt / MARKER).read_text()
    r["files"] = sorted(os.listdir(ckpt))

    # --- strict loads compare keys and shapes with the folder's metadata (as single files do)
    r["fewer_layers"] = outcome(lambda: fabric.load(ckpt, {"model": setup(4, 8, 8)}))
    r["more_layers"] = outcome(lambda: fabric.load(ckpt, {"model": setup(4, 8, 8, 8, 1)}))
    r["other_shapes"] = outcome(lambda: fabric.load(ckpt, {"model": setup(4, 16, 8, 1)}))
    smaller = setup(4, 8, 8)
    r["fewer_layers_not_strict"] = outcome(lambda: fabric.load(ckpt, {"model": smaller}, strict=False))
    r["fewer_layers_not_strict_values"] = values(smaller) == {k: v for k, v in saved.items() if not k.startswith("4.")}
    same = setup(4, 8, 8, 1)
    r["same_model"] = outcome(lambda: fabric.load(ckpt, {"model": same}))
    r["same_model_values"] = values(same) == saved

    # --- damaged folders: every rank raises the same CheckpointError (each verifies a share of the files)
    shards = sorted(name for name in r["files"] if name.endswith(".distcp"))
    r["shards"] = shards
    cases = out / "cases"
    for name, change in (
        ("flipped_shard_1", lambda folder: flip(folder / shards[1], 40)),
        ("flipped_shard_0", lambda folder: flip(folder / shards[0], 40)),
        ("cut_shard", lambda folder: cut(folder / shards[0])),
        ("cut_metadata", lambda folder: cut(folder / ".metadata")),
        ("old_marker_cut_shard", lambda folder: (old_marker(folder), cut(folder / shards[1]))),
        ("old_marker_cut_metadata", lambda folder: (old_marker(folder), cut(folder / ".metadata"))),
    ):
        folder = cases / name
        damage(lambda: (shutil.copytree(ckpt, folder), change(folder)))
        target = {"model": setup(4, 8, 8, 1), "optimizer": optimizer}
        r[name] = outcome(lambda: fabric.load(folder, target))

    # --- a rank that fails while its state is collected: both ranks raise, no hang, nothing written
    r["rank1_fails"] = outcome(lambda: fabric.save(out / "flaky", {"model": model, "flaky": FailsOnRank1(rank)}))
    r["rank1_fails_left"] = sorted(p for p in os.listdir(out) if "flaky" in p)

    if args.disk:
        disk = Path(args.disk)
        small = setup(4, 8, 1)
        fabric.save(disk / "ckpt", {"model": small, "step": 1})
        big = setup(4, 16384, 1)  # ~330 KB of parameters: more than the disk holds
        r["disk_full"] = outcome(lambda: fabric.save(disk / "ckpt", {"model": big, "step": 2}))
        r["disk_full_left"] = sorted(os.listdir(disk))
        again = setup(4, 8, 1)
        r["disk_full_old_loads"] = outcome(lambda: fabric.load(disk / "ckpt", {"model": again, "step": 0}))
        r["disk_full_old_values"] = values(again) == values(small)
        fabric.strategy.state_dict_type = "full"  # one file written by rank 0 only: rank 1 learns it failed too
        r["disk_full_full"] = outcome(lambda: fabric.save(disk / "full.ckpt", {"model": big}))
        r["disk_full_full_left"] = sorted(os.listdir(disk))
    (out / f"result{rank}.json").write_text(json.dumps(r))


def flip(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def old_marker(folder):
    """A marker as fabric_lite wrote it before checksums: loading falls back to what DCP itself notices."""
    (folder / MARKER).write_text("fabric_lite sharded checkpoint: complete\n")


if __name__ == "__main__":
    main()
