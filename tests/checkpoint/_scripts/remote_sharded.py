"""Run by tests/checkpoint/test_remote_fsspec.py: sharded (FSDP/DCP) checkpoints at fsspec URLs, one JSON per rank.

    python remote_sharded.py OUT_DIR URL_FOLDER DEVICES [--object-store]

URL_FOLDER is a file:// URL for 2 ranks (memory:// lives in one process and cannot be shared), memory:// for 1.
With --object-store the script also registers a memory store without an atomic rename (as S3/GCS) and saves there.
"""

import argparse
import json
from pathlib import Path

import fsspec
import torch
from fsspec.implementations.memory import MemoryFileSystem
from sharded_shared import full, outcome, values
from torch import nn

from fabric_lite import Fabric
from fabric_lite.checkpoint import latest_checkpoint


class ObjectStoreFileSystem(MemoryFileSystem):
    """A memory store standing in for an object store: no atomic rename (fabric_lite writes folders in place)."""

    protocol = ("objstore",)
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("objstore://") if isinstance(path, str) else path)


class FailsOnLastRank:
    """A stateful object whose state_dict raises on the last rank only."""

    def __init__(self, rank, world_size):
        self.fails = rank == world_size - 1

    def state_dict(self):
        if self.fails:
            raise RuntimeError("the last rank cannot give its state")
        return {}

    def load_state_dict(self, state):
        pass


def model_of(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("folder")
    parser.add_argument("devices", type=int)
    parser.add_argument("--object-store", action="store_true")
    args = parser.parse_args()
    fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=args.devices)
    fabric.launch()
    rank = fabric.global_rank
    fs, root = fsspec.core.url_to_fs(args.folder)
    r = {"rank": rank}

    def trained(seed):
        model = fabric.setup(model_of(seed))
        optimizer = fabric.setup_optimizers(torch.optim.Adam(model.parameters(), lr=0.1))
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        return model, optimizer

    def round_trip(url, key):
        model, optimizer = trained(0)
        fabric.save(url, {"model": model, "optimizer": optimizer, "step": 3})
        fresh, fresh_optimizer = trained(1)
        state = {"model": fresh, "optimizer": fresh_optimizer, "step": 0}
        fabric.load(url, state)
        r[f"{key}_step"] = state["step"]
        r[f"{key}_model_equal"] = values(fresh) == values(model)
        mine, theirs = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
        r[f"{key}_optimizer_equal"] = all(
            torch.equal(full(mine[k][name]), full(theirs[k][name])) for k in mine for name in mine[k])
        fs_, path = fsspec.core.url_to_fs(url)
        r[f"{key}_files"] = sorted(p.rsplit("/", 1)[-1] for p in fs_.ls(path, detail=False))
        r[f"{key}_siblings"] = sorted(p.rsplit("/", 1)[-1] for p in fs_.ls(fs_._parent(path), detail=False))
        return model, optimizer

    url = f"{args.folder}/ckpt"
    model, optimizer = round_trip(url, "first")
    fabric.save(url, {"model": model, "optimizer": optimizer, "step": 4})  # over the first: the rename protocol
    r["after_second_save"] = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    r["latest"] = latest_checkpoint(args.folder) if rank == 0 else None

    # A save that fails part-way: every rank raises, the checkpoint at the URL stays, no staging folder is left.
    other, _ = trained(5)
    r["failed_save"] = outcome(lambda: fabric.save(url, {"model": other, "bad": FailsOnLastRank(rank, fabric.world_size)}))
    r["after_failed_save"] = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    kept, _ = trained(6)
    state = {"model": kept, "step": 0}
    fabric.load(url, state)
    r["kept_step"], r["kept_equal"] = state["step"], values(kept) == values(model)

    # A flipped byte in one shard, changed through the store's API: every rank raises the same CheckpointError.
    fabric.barrier()
    if rank == 0:
        shard = sorted(p for p in fs.ls(f"{root}/ckpt", detail=False) if p.endswith(".distcp"))[-1]
        data = bytearray(fs.cat_file(shard))
        data[40] ^= 0x01
        fs.pipe_file(shard, bytes(data))
        r["flipped"] = shard.rsplit("/", 1)[-1]
    fabric.barrier()
    target, _ = trained(2)
    r["damaged"] = outcome(lambda: fabric.load(url, {"model": target}))

    if args.object_store:  # single process: also merge a URL folder into a URL file
        from fabric_lite.checkpoint import load_checkpoint_file
        from fabric_lite.checkpoint.sharded import consolidate

        fabric.save(f"{args.folder}/intact", {"model": model, "step": 4})
        merged = consolidate(f"{args.folder}/intact", f"{args.folder}/merged.ckpt")
        r["consolidated"] = [str(merged), load_checkpoint_file(str(merged))["step"]]
        fabric.strategy.state_dict_type = "full"  # one file at a URL, written by rank 0
        fabric.save(f"{args.folder}/full.ckpt", {"model": model, "step": 6})
        again, _ = trained(7)
        state = {"model": again, "step": 0}
        fabric.load(f"{args.folder}/full.ckpt", state)
        r["full_file"] = [state["step"], values(again) == values(model)]
        fabric.strategy.state_dict_type = "sharded"

        fsspec.register_implementation("objstore", ObjectStoreFileSystem, clobber=True)
        round_trip("objstore://run/ckpt", "object_store")
        model, optimizer = trained(3)
        fabric.save("objstore://run/ckpt", {"model": model, "optimizer": optimizer, "step": 5})  # in place, over it
        r["object_store_second"] = sorted(p.rsplit("/", 1)[-1] for p in fsspec.filesystem("objstore").ls("/run/ckpt", detail=False))
    (Path(args.out_dir) / f"result{rank}.json").write_text(json.dumps(r))


if __name__ == "__main__":
    main()
