"""Damaged checkpoints: every cut-off or changed file either loads the saved values or raises ONE CheckpointError
naming the path; latest_checkpoint skips damaged ones with a warning. Real files, cut and changed byte by byte.

Before: a cut file could give a bare ``OSError: [Errno 22] Invalid argument`` (no path), a changed byte an
``IndexError`` or, for most bytes of the tensor data, wrong weights without any error.
"""

from __future__ import annotations

import re
import warnings
import zipfile

import pytest
import torch
from torch import nn

from fabric_lite import Fabric
from fabric_lite.checkpoint import latest_checkpoint
from fabric_lite.checkpoint.folder import MARKER, META_FILE, save_folder
from fabric_lite.checkpoint.sharded import consolidate
from fabric_lite.errors import CheckpointError


def small_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    return model, optimizer


def equal(a, b):
    """Deep equality of nested checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def outcomes(load, path, data, variants, expected):
    """Write each variant of ``data`` to ``path`` and load it: count intact loads and CheckpointErrors; fail on anything else."""
    counts = {"intact": 0, "refused": 0}
    for label, variant in variants:
        path.unlink(missing_ok=True)  # a new file each time: rewriting one in place makes ext4 flush it to disk
        path.write_bytes(variant)
        try:
            loaded = load(path)
        except CheckpointError as error:
            assert str(path) in str(error) and "Fix:" in str(error), (label, str(error))
            counts["refused"] += 1
            continue
        except BaseException as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{label}: {type(error).__name__}: {error}")
        assert equal(loaded, expected), f"{label}: loaded values that differ from the saved ones"
        counts["intact"] += 1
    return counts


def cuts(data):
    return [(f"cut at {n}", data[:n]) for n in range(len(data))]


def flips(data, positions, mask=0xFF):
    for position in positions:
        changed = bytearray(data)
        changed[position] ^= mask
        yield f"byte {position} ^ {mask:#x}", bytes(changed)


def data_start(data, info):
    """Where a record's bytes begin: after its local header, whose extra field torch pads for alignment."""
    offset = info.header_offset
    return offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + int.from_bytes(
        data[offset + 28:offset + 30], "little")


def test_a_saved_checkpoint_cut_at_every_offset_or_with_any_byte_changed_never_loads_wrong_values(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, _ = small_state()
    fabric.save(tmp_path / "good.ckpt", {"model": model, "step": 7, "note": "hi"})
    data = (tmp_path / "good.ckpt").read_bytes()
    expected = fabric.load(tmp_path / "good.ckpt")
    assert 2_000 < len(data) < 4_000  # a few KB: every offset and every byte take ~1 ms each
    load = lambda path: fabric.load(path)  # noqa: E731
    cut = outcomes(load, tmp_path / "cut.ckpt", data, cuts(data), expected)
    # Only cuts inside the trailing checksum text can leave the values readable (and then they are intact).
    assert cut["intact"] <= 26 and cut["refused"] >= len(data) - 26, cut
    changed = outcomes(load, tmp_path / "changed.ckpt", data, flips(data, range(len(data))), expected)
    # One bit (not a whole byte) changed in every byte of every tensor and of the pickle: always refused.
    with zipfile.ZipFile(tmp_path / "good.ckpt") as archive:
        records = [i for i in archive.infolist() if "/data/" in i.filename or i.filename.endswith("data.pkl")]
    positions = [p for i in records for p in range(data_start(data, i), data_start(data, i) + i.file_size)]
    bits = outcomes(load, tmp_path / "bit.ckpt", data, flips(data, positions, mask=0x01), expected)
    print(cut, changed, bits)
    assert bits == {"intact": 0, "refused": len(positions)}, bits


def test_load_raw_and_weights_only_false_verify_too(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, _ = small_state()
    fabric.save(tmp_path / "good.ckpt", {"model": model})
    data = bytearray((tmp_path / "good.ckpt").read_bytes())
    with zipfile.ZipFile(tmp_path / "good.ckpt") as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename)
        start = data_start(data, record)
    data[start + 3] ^= 0x10  # one bit of the first tensor
    (tmp_path / "bad.ckpt").write_bytes(bytes(data))
    message = (f"fabric.load({str(tmp_path / 'bad.ckpt')!r}) could not read the file: the checksum of its record "
               f"{record.filename!r} does not match its bytes. It is not a complete torch checkpoint: it was cut off or "
               f"changed after it was written, or is of another kind. Fix: load another checkpoint from "
               f"{str(tmp_path)!r} (latest_checkpoint(folder) names the newest intact one), or save it again.")
    for load in (lambda: fabric.load(tmp_path / "bad.ckpt"), lambda: fabric.load(tmp_path / "bad.ckpt", weights_only=False),
                 lambda: fabric.load(tmp_path / "bad.ckpt", {"model": model})):
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load()
    # a raw state dict (torch.save, no seal): its records' CRC-32s still catch changed tensor bytes
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    raw = bytearray((tmp_path / "raw.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "raw.pt") as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename)
        start = data_start(raw, record)
    raw[start] ^= 0x01
    (tmp_path / "raw_bad.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=re.escape("does not match its bytes")):
        fabric.load_raw(tmp_path / "raw_bad.pt", model)


def test_index_change_is_refused_by_the_seal(tmp_path):
    """A changed byte in the zip index (here: a record's file attributes, which torch reads and zipfile does not check)."""
    fabric = Fabric(accelerator="cpu")
    model, _ = small_state()
    fabric.save(tmp_path / "a.ckpt", {"model": model})
    data = bytearray((tmp_path / "a.ckpt").read_bytes())
    with zipfile.ZipFile(tmp_path / "a.ckpt") as archive:
        start = archive.start_dir
    data[start + 38] ^= 0xFF  # external attributes of the first central directory entry
    (tmp_path / "a.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(
            "could not read the file: its index (the zip central directory) does not match the checksum saved with it.")):
        fabric.load(tmp_path / "a.ckpt")


def test_files_without_fabric_lite_checksums_still_load_silently(tmp_path):
    """torch.save files (no seal), files saved with compute_crc32=False and the legacy format load with no warning;
    cut at every offset they load intact or raise CheckpointError."""
    from torch.utils.serialization import config

    model, _ = small_state()
    expected = model.state_dict()
    torch.save(expected, tmp_path / "plain.pt")
    with config.patch({"save.compute_crc32": False}):
        torch.save(expected, tmp_path / "nocrc.pt")
    torch.save(expected, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    fabric = Fabric(accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("plain.pt", "nocrc.pt", "legacy.pt"):
            assert equal(fabric.load(tmp_path / name), dict(expected)), name
    for name in ("plain.pt", "legacy.pt"):
        data = (tmp_path / name).read_bytes()
        counts = outcomes(lambda path: fabric.load(path), tmp_path / f"cut_{name}", data, cuts(data), dict(expected))
        assert counts["refused"] >= len(data) - 1, (name, counts)


# ------------------------------------------------------------------------------------------ latest_checkpoint
def sharded(path, value):
    """A sharded folder as FSDP saves it (DCP shards, meta.pt, a COMPLETE marker listing checksums), in this process."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process on purpose
        save_folder(path, lambda staging: dcp.save({"model": {"w": torch.full((64,), value)}}, checkpoint_id=staging,
                                                   no_dist=True), {"step": int(value)}, rank=0, world_size=1)
    return path


def test_latest_checkpoint_skips_damaged_and_foreign_files_with_a_warning(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model, _ = small_state()
    for step in (1, 2, 3):
        fabric.save(tmp_path / f"step-{step}.ckpt", {"model": model, "step": step})
    data = bytearray((tmp_path / "step-3.ckpt").read_bytes())
    with zipfile.ZipFile(tmp_path / "step-3.ckpt") as archive:
        data[data_start(data, next(i for i in archive.infolist() if "/data/" in i.filename))] ^= 0x40
    (tmp_path / "step-3.ckpt").write_bytes(bytes(data))
    (tmp_path / "step-2.ckpt").write_bytes((tmp_path / "step-1.ckpt").read_bytes()[:-100])
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as archive:  # newest: a zip archive, but no checkpoint
        archive.writestr("notes.txt", "hello")
    (tmp_path / "metrics.csv").write_text("step,loss\n")  # not meant as a checkpoint: ignored silently
    with pytest.warns(UserWarning) as record:
        assert latest_checkpoint(tmp_path) == tmp_path / "step-1.ckpt"
    messages = sorted(str(w.message) for w in record)
    prefix = f"latest_checkpoint({str(tmp_path)!r}) skipped "
    assert messages == sorted([
        f"{prefix}{str(tmp_path / 'notes.zip')!r}: it is not an intact torch checkpoint: it is a zip archive but not a "
        f"torch checkpoint (torch.save writes one folder holding data.pkl). Fix: delete it or move it out of the folder "
        f"once you no longer need it.",
        f"{prefix}{str(tmp_path / 'step-3.ckpt')!r}: it is not an intact torch checkpoint: " + messages_reason(messages, "step-3"),
        f"{prefix}{str(tmp_path / 'step-2.ckpt')!r}: it is not an intact torch checkpoint: " + messages_reason(messages, "step-2"),
    ])
    assert all("metrics.csv" not in m for m in messages)


def messages_reason(messages, name):
    """The reason part of the warning about ``name`` (checked below to be a damage reason, not any text)."""
    message = next(m for m in messages if f"{name}.ckpt'" in m)
    reason = message.split("it is not an intact torch checkpoint: ", 1)[1]
    assert reason.startswith(("the checksum of its record", "its zip structure is broken", "its index")), reason
    return reason


def test_latest_checkpoint_skips_a_sharded_folder_whose_shard_changed(tmp_path):
    import os
    import time

    sharded(tmp_path / "step-1", 1.0)
    time.sleep(0.01)
    newest = sharded(tmp_path / "step-2", 2.0)
    assert latest_checkpoint(tmp_path) == newest
    marker = (newest / MARKER).read_text()
    assert marker.startswith("fabric_lite sharded checkpoint: complete\n") and "crc32 " in marker and META_FILE in marker
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[10] ^= 0x01
    shard.write_bytes(bytes(data))
    os.utime(newest / MARKER)  # still the newest
    with pytest.warns(UserWarning, match=re.escape(
            f"skipped {str(newest)!r}: its files do not match the checksums its COMPLETE marker lists (the checksum of "
            f"{shard.name} does not match its bytes)")):
        assert latest_checkpoint(tmp_path) == tmp_path / "step-1"
    with pytest.raises(CheckpointError, match=re.escape(
            f"consolidate({str(newest)!r}) refused the sharded checkpoint {str(newest)!r}: the checksum of {shard.name} "
            f"does not match its bytes. Its files were cut off or changed after the save finished. Fix: load another "
            f"checkpoint (latest_checkpoint(folder) names the newest intact one), or save it again.")):
        consolidate(newest, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    assert torch.load(consolidate(tmp_path / "step-1", tmp_path / "out.pt"), weights_only=True)["step"] == 1
