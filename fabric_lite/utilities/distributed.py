"""Collectives over torch.distributed: gather (also of uneven first dimensions), reduce, broadcast, barrier.

These are the building blocks the multi-process strategies share. Each works on one tensor; the
Fabric facade maps them over collections.
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist

from fabric_lite.errors import ConfigurationError

_MAX_DIMS = 15
_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM"}


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _world(group: Any | None) -> int:
    return dist.get_world_size(group)


def all_gather(
    tensor: torch.Tensor, group: Any | None = None, sync_grads: bool = False, *, same_shape: bool = False
) -> torch.Tensor:
    """Gather ``tensor`` from every rank.

    Equal shapes give a ``(world_size, *shape)`` stack. Tensors whose first dimension differs
    between ranks (the last batch of an evaluation set, say) are concatenated in rank order
    instead of hanging: every rank first learns every other rank's shape, dtype and device type,
    so a dtype or device mismatch raises the same error on every rank instead of returning garbage
    or aborting the process. Tensors of at most 4 KiB travel inside that exchange (one collective in
    all); larger ones need a second collective. ``same_shape=True`` skips the exchange for callers that
    know every rank passes the same shape, dtype and device type.

    With ``sync_grads=True`` the result carries gradients back to each rank's input.
    """
    world = _world(group)
    tensor = tensor.contiguous()
    if same_shape:
        return _stack(tensor, group, sync_grads, world)
    if tensor.dim() > _MAX_DIMS:
        raise ConfigurationError(
            f"fabric.all_gather got a tensor with {tensor.dim()} dimensions; at most {_MAX_DIMS} are supported. "
            f"Fix: reshape it first."
        )
    # One header per rank, [dims, shape..., dtype code, device-type code] (-1 pads unused shape slots),
    # followed by the tensor's own bytes when they fit in _INLINE_BYTES: small tensors (metrics, counts)
    # then travel in this one collective, larger ones in a second one once every shape is known.
    shape = list(tensor.shape)
    dtype_code, device_code = _code(_DTYPES, tensor.dtype), _code(_DEVICE_TYPES, tensor.device.type)
    header_values = [len(shape), *shape, *([-1] * (_MAX_DIMS - len(shape))), dtype_code, device_code]
    nbytes = tensor.numel() * tensor.element_size()
    inline = not sync_grads and nbytes <= _INLINE_BYTES and dtype_code >= 0
    # Few tensor operations on purpose: this runs for every gathered metric (see scripts/bench_all_gather.py).
    pieces = [torch.tensor(header_values, dtype=torch.long).view(torch.uint8).to(tensor.device)]
    if inline and nbytes:
        pieces.append(tensor.detach().reshape(-1).view(torch.uint8))
    pieces.append(torch.zeros(_INLINE_BYTES - (nbytes if inline else 0), dtype=torch.uint8, device=tensor.device))
    packets = _stack(torch.cat(pieces), group, False, world)
    header_size = _HEADER_BYTES
    rows = packets[:, :header_size].cpu().contiguous().view(torch.long).tolist()
    table = [tuple(int(v) for v in row[1 : int(row[0]) + 1]) for row in rows]
    _check_same_kind(rows, world)
    # Every rank decides from the same gathered rows, so all take the same branch below.
    if not sync_grads and all(row[-2] >= 0 and _numel(shape) * _DTYPES[row[-2]].itemsize <= _INLINE_BYTES
                              for row, shape in zip(rows, table)):
        parts = [
            packets[rank, header_size : header_size + _numel(table[rank]) * tensor.element_size()]
            .view(tensor.dtype).reshape(table[rank])
            for rank in range(world)
        ]
        if all(shape == table[0] for shape in table):
            return torch.stack(parts)
        _check_trailing(table, world)
        return torch.cat(parts)
    if all(s == table[0] for s in table):
        return _stack(tensor, group, sync_grads, world)
    _check_trailing(table, world)
    longest = max(s[0] for s in table)
    padded = tensor
    if tensor.shape[0] < longest:
        pad = torch.zeros((longest - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded = torch.cat([tensor, pad])
    stacked = _stack(padded, group, sync_grads, world)
    return torch.cat([stacked[rank, : table[rank][0]] for rank in range(world)])


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _check_trailing(table: list[tuple[int, ...]], world: int) -> None:
    if len({len(s) for s in table}) != 1 or len(table[0]) == 0 or len({s[1:] for s in table}) != 1:
        raise ConfigurationError(
            f"fabric.all_gather got tensors of shapes {table} on the {world} ranks; only the first dimension may "
            f"differ between ranks. Fix: gather tensors of the same trailing shape (pad or reshape them)."
        )


#: Tensors up to this many bytes travel inside all_gather's header collective (one collective in all).
_INLINE_BYTES = 4096
_HEADER_BYTES = (_MAX_DIMS + 3) * 8

# Codes exchanged in all_gather's header; a value missing here is sent as its own code (-2) and compared
# by that alone, which still catches every mismatch between listed kinds.
_DTYPES: tuple[Any, ...] = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64, torch.complex128,
)
_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "xla", "mps", "meta")


def _code(table: tuple[Any, ...], value: Any) -> int:
    return table.index(value) if value in table else -2


def _name(table: tuple[Any, ...], code: int) -> str:
    return str(table[code]).replace("torch.", "") if 0 <= code < len(table) else "other"


def _check_same_kind(rows: list[list[int]], world: int) -> None:
    """Raise on every rank (each holds the same table) when dtypes or device types differ."""
    dtypes = [_name(_DTYPES, row[-2]) for row in rows]
    devices = [_name(_DEVICE_TYPES, row[-1]) for row in rows]
    for what, values, fix in (
        ("dtypes", dtypes, "convert it to one dtype on every rank first, e.g. tensor.float()"),
        ("device types", devices, "move it to fabric.device on every rank first"),
    ):
        if len(set(values)) > 1:
            listed = ", ".join(f"rank {rank}: {value}" for rank, value in enumerate(values))
            raise ConfigurationError(
                f"fabric.all_gather got tensors of different {what} on the {world} ranks ({listed}); the bytes of "
                f"one cannot be read as the other. Fix: {fix}."
            )


def _stack(tensor: torch.Tensor, group: Any | None, sync_grads: bool, world: int) -> torch.Tensor:
    if sync_grads:
        return _GatherWithGradients.apply(tensor, group)
    with torch.no_grad():
        out = torch.empty((world, *tensor.shape), dtype=tensor.dtype, device=tensor.device)
        dist.all_gather_into_tensor(out, tensor, group=group) if _has_gather_into_tensor(tensor) else dist.all_gather(
            list(out.unbind(0)), tensor, group=group
        )
        return out


class _GatherWithGradients(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any | None) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(tensor) for _ in range(_world(group))]
        dist.all_gather(parts, tensor, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def _has_gather_into_tensor(tensor: torch.Tensor) -> bool:
    # gloo has no all_gather_into_tensor; NCCL does and it avoids a list of outputs.
    return tensor.device.type == "cuda" and dist.get_backend() == "nccl"


def all_reduce(tensor: torch.Tensor, group: Any | None = None, reduce_op: Any = "mean") -> torch.Tensor:
    """Reduce ``tensor`` across ranks into a new tensor (the input is left untouched)."""
    if isinstance(reduce_op, str):
        op_name = reduce_op.lower()
        op = getattr(dist.ReduceOp, _OPS[op_name])
        divide = op_name == "mean"
    else:
        op, divide = reduce_op, False
    result = tensor.clone()
    if divide and not result.is_floating_point():
        result = result.float()  # the mean of integers is not an integer
    dist.all_reduce(result, op=op, group=group)
    if divide:
        result /= _world(group)
    return result


def broadcast_object(obj: Any, src: int = 0, group: Any | None = None, device: torch.device | None = None) -> Any:
    """Send any picklable object (tensors included) from ``src`` to every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group, device=device)
    return box[0]


def find_free_port(address: str = "127.0.0.1") -> int:
    """A port that is free on ``address`` right now (for a rendezvous on one machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def port_in_use(address: str, port: int) -> bool:
    """Whether something already listens on ``address:port`` (checked before a rendezvous starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address if address not in ("localhost",) else "127.0.0.1", port))
        except OSError:
            return True
    return False


def any_rank(flag: bool, strategy: Any) -> bool:
    """Whether ``flag`` is true on any rank: the same answer on every rank (one ``all_reduce(MAX)`` of one element).

    In one process no collective runs. Example:
        >>> from fabric_lite import Fabric
        >>> any_rank(True, Fabric(accelerator="cpu").strategy)
        True
    """
    if strategy.world_size <= 1:
        return bool(flag)
    vote = torch.tensor([1.0 if flag else 0.0], device=strategy.root_device)
    return bool(strategy.all_reduce(vote, reduce_op="max").item() > 0)
