"""A 2-rank run whose last call is a collective, then the script simply ends (no teardown by the user)."""

import torch

from fabric_lite import Fabric

fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
total = fabric.all_reduce(torch.tensor(1.0), reduce_op="sum")
print(f"rank {fabric.global_rank} total {total.item()}", flush=True)
