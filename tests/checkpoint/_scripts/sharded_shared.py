"""What remote_sharded.py and sharded_damage.py both use (they import it from their own folder, which Python puts
first on sys.path when it runs a script)."""

from torch.distributed.tensor import DTensor


def full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def values(model):
    return {name: full(p.detach()).flatten().tolist() for name, p in model.module.named_parameters()}


def outcome(fn):
    try:
        fn()
        return "ok"
    except BaseException as error:  # noqa: BLE001 - the type is what the test checks (DCP raises a BaseException)
        return f"{type(error).__name__}: {error}"
