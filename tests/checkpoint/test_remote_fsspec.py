"""Checkpoints at fsspec URLs: memory:// and file:// round trips, damaged remote files, failed remote writes.

Remote stores (S3, GCS) cannot exist here: two memory:// file systems registered below stand in for them, one
whose writes fail midway (a connection dropped during an upload) and one without an atomic rename (an object
store), which records what was written where.
"""

from __future__ import annotations

import errno
import os
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

fsspec = pytest.importorskip("fsspec", reason="remote checkpoints go through fsspec")
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem  # noqa: E402

from fabric_lite import Fabric  # noqa: E402
from fabric_lite.checkpoint import atomic_save, load_checkpoint_file  # noqa: E402
from fabric_lite.errors import CheckpointError, ConfigurationError  # noqa: E402


# ------------------------------------------------------------------------ stand-ins for remote stores
class _OwnProtocol:
    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str):
            for protocol in cls.protocol:
                path = path.removeprefix(f"{protocol}://")
        return super()._strip_protocol(path)


class _DroppedFile(MemoryFile):
    """Takes the first half of a write, then fails as a dropped connection would."""

    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ECONNRESET, "Connection reset by peer (the store went away)")


class FlakyMemoryFileSystem(_OwnProtocol, MemoryFileSystem):
    """A memory store (atomic mv) whose file writes fail midway while ``failing`` is set."""

    protocol = ("flakymem", "memory")  # 'memory': its mv is one dictionary assignment, as for memory://
    store: dict = {}
    pseudo_dirs = [""]
    failing = False

    def _open(self, path, mode="rb", **kwargs):
        if self.failing and "w" in mode:
            path = self._strip_protocol(path)
            handle = _DroppedFile(self, path)
            handle.commit()
            return handle
        return super()._open(path, mode, **kwargs)


class ObjectStoreFileSystem(_OwnProtocol, MemoryFileSystem):
    """A memory store standing in for an object store: no atomic rename; records every path opened for writing."""

    protocol = ("objstore",)
    store: dict = {}
    pseudo_dirs = [""]
    written: list = []

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode:
            self.written.append(self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("flakymem", FlakyMemoryFileSystem, clobber=True)
fsspec.register_implementation("objstore", ObjectStoreFileSystem, clobber=True)


@pytest.fixture
def run_id():
    """A fresh folder name in the process-wide memory stores, removed afterwards."""
    name = f"run-{uuid.uuid4().hex[:8]}"
    yield name
    for protocol in ("memory", "flakymem", "objstore"):
        fs = fsspec.filesystem(protocol)
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


def trained(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    return model, optimizer


def same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) and a.dtype == b.dtype
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def listing(protocol, folder):
    return sorted(Path(p).name for p in fsspec.filesystem(protocol).ls(folder, detail=False))


# ------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("protocol", ["memory", "file", "objstore"])
def test_round_trip_is_bitwise_and_leaves_only_the_checkpoint(protocol, run_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"file://{tmp_path}/{run_id}/last.ckpt" if protocol == "file" else f"{protocol}://{run_id}/last.ckpt"
    fabric = Fabric(accelerator="cpu")
    model, optimizer = trained(0)
    fabric.save(url, {"model": model, "optimizer": optimizer, "step": 7, "note": "hello"})

    fresh_model, fresh_optimizer = trained(1)
    state = {"model": fresh_model, "optimizer": fresh_optimizer, "step": 0, "note": ""}
    assert fabric.load(url, state) == {}
    assert state["step"] == 7 and state["note"] == "hello"
    assert same_tensors(fresh_model.state_dict(), model.state_dict())
    assert same_tensors(fresh_optimizer.state_dict(), optimizer.state_dict())

    folder = str(tmp_path / run_id) if protocol == "file" else f"/{run_id}"
    assert listing(protocol, folder) == ["last.ckpt"]  # no temporary file left
    if protocol == "file":
        assert (tmp_path / run_id / "last.ckpt").is_file()
        assert sorted(os.listdir(tmp_path)) == [run_id]  # and no folder named 'file:'
    else:
        assert os.listdir(tmp_path) == []  # nothing written locally
    if protocol == "objstore":  # no rename: the complete archive went to the final key in one upload
        assert ObjectStoreFileSystem.written[-1:] == [f"/{run_id}/last.ckpt"]
        assert not [p for p in ObjectStoreFileSystem.written if p.endswith(".tmp")]


def test_load_raw_reads_a_plain_state_dict_from_a_url(run_id):
    model, _ = trained(0)
    with fsspec.open(f"memory://{run_id}/weights.pt", "wb") as handle:
        torch.save(model.state_dict(), handle)
    fresh, _ = trained(1)
    Fabric(accelerator="cpu").load_raw(f"memory://{run_id}/weights.pt", fresh)
    assert same_tensors(fresh.state_dict(), model.state_dict())


def test_a_file_url_writes_the_same_bytes_as_the_local_path(tmp_path):
    """The seal computed while streaming to the store equals the one the local writer adds afterwards."""
    state = {"weights": torch.randn(300, 40), "step": 3}
    atomic_save(state, tmp_path / "local.ckpt")
    atomic_save(state, f"file://{tmp_path}/remote.ckpt")
    assert (tmp_path / "local.ckpt").read_bytes() == (tmp_path / "remote.ckpt").read_bytes()


# ------------------------------------------------------------------------ damaged remote files
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_remote_file_raises_checkpoint_error_naming_url_and_fix(damage, run_id):
    url = f"memory://{run_id}/last.ckpt"
    atomic_save({"weights": torch.randn(64, 32), "step": 1}, url)
    fs = fsspec.filesystem("memory")
    data = bytearray(fs.cat_file(f"/{run_id}/last.ckpt"))
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        data[len(data) // 2] ^= 0x01  # inside the tensor bytes: torch alone would load wrong weights
    fs.pipe_file(f"/{run_id}/last.ckpt", bytes(data))
    with pytest.raises(CheckpointError, match=rf"fabric.load\('memory://{run_id}/last.ckpt'\) could not read the file: "
                                              rf".*Fix: load another checkpoint from 'memory://{run_id}'"):
        load_checkpoint_file(url)


def test_missing_remote_file_and_a_remote_folder_are_refused(run_id):
    with pytest.raises(CheckpointError, match=rf"'memory://{run_id}/none.ckpt'\) found no checkpoint: nothing exists "
                                              rf"at that URL. Fix: check the URL"):
        load_checkpoint_file(f"memory://{run_id}/none.ckpt")
    atomic_save({"step": 1}, f"memory://{run_id}/sub/last.ckpt")
    with pytest.raises(CheckpointError, match=r"got a folder, but this strategy saves single-file checkpoints"):
        load_checkpoint_file(f"memory://{run_id}/sub")
    with pytest.raises(CheckpointError, match=rf"that URL is an existing folder. Fix: choose a file path such as "
                                              rf"'memory://{run_id}/sub/last.ckpt'"):
        atomic_save({"step": 2}, f"memory://{run_id}/sub")


# ------------------------------------------------------------------------ failed writes
def test_a_write_that_fails_midway_keeps_the_previous_checkpoint_and_leaves_no_temporary(run_id, monkeypatch):
    url = f"flakymem://{run_id}/last.ckpt"
    fabric = Fabric(accelerator="cpu")
    model, optimizer = trained(0)
    fabric.save(url, {"model": model, "step": 1})
    before = FlakyMemoryFileSystem.store[f"/{run_id}/last.ckpt"].getvalue()

    monkeypatch.setattr(FlakyMemoryFileSystem, "failing", True)
    other, _ = trained(1)
    with pytest.raises(CheckpointError, match=rf"fabric.save\('{url}'\) could not write '{url}': ConnectionResetError: .*"
                                              rf"Connection reset by peer.*The checkpoint at that URL \(if any\) is "
                                              rf"unchanged and no temporary file was left. Fix: check that the store"):
        fabric.save(url, {"model": other, "step": 2})
    monkeypatch.setattr(FlakyMemoryFileSystem, "failing", False)

    assert listing("flakymem", f"/{run_id}") == ["last.ckpt"]
    assert FlakyMemoryFileSystem.store[f"/{run_id}/last.ckpt"].getvalue() == before
    fresh, _ = trained(2)
    state = {"model": fresh, "step": 0}
    fabric.load(url, state)
    assert state["step"] == 1 and same_tensors(fresh.state_dict(), model.state_dict())


def test_an_object_store_save_that_fails_before_upload_writes_nothing(run_id):
    url = f"objstore://{run_id}/last.ckpt"
    atomic_save({"step": 1}, url)
    ObjectStoreFileSystem.written.clear()
    with pytest.raises(CheckpointError, match=rf"could not write '{url}': .*unchanged and no temporary file was left"):
        atomic_save({"step": 2, "bad": lambda: None}, url)  # torch.save cannot pickle a lambda
    assert ObjectStoreFileSystem.written == []  # nothing was uploaded
    assert load_checkpoint_file(url) == {"step": 1}


# ------------------------------------------------------------------------ protocols that cannot work
def test_unknown_protocol_is_refused_naming_valid_ones_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fabric = Fabric(accelerator="cpu")
    model = nn.Linear(2, 1)
    with pytest.raises(ConfigurationError, match=r"fabric.save\('nosuch://b/last.ckpt'\) names a nosuch:// URL, but "
                                                 r"fsspec knows no file system for nosuch://. Fix: use one of its "
                                                 r"protocols \(file://, memory://, s3:// \(pip install s3fs\)"):
        fabric.save("nosuch://b/last.ckpt", {"model": model})
    with pytest.raises(ConfigurationError, match=r"fabric.load\('nosuch://b/last.ckpt'\) names a nosuch:// URL"):
        fabric.load("nosuch://b/last.ckpt", {"model": model})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("url", "package"), [("s3://bucket/run/last.ckpt", "s3fs"), ("gs://bucket/last.ckpt", "gcsfs")])
def test_a_protocol_whose_package_is_missing_names_the_package(url, package, tmp_path, monkeypatch):
    try:
        __import__(package)
        pytest.skip(f"{package} is installed here")
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)
    fabric = Fabric(accelerator="cpu")
    scheme = url.split("://")[0]
    with pytest.raises(ConfigurationError, match=rf"fabric.save\('{url}'\) names a {scheme}:// URL, but the package "
                                                 rf"fsspec needs for {scheme}:// is not installed .*Fix: pip install "
                                                 rf"{package}, or pass a local path"):
        fabric.save(url, {"model": nn.Linear(2, 1)})
    with pytest.raises(ConfigurationError, match=rf"fabric.load_raw\('{url}'\).*Fix: pip install {package}"):
        fabric.load_raw(url, nn.Linear(2, 1))
    assert os.listdir(tmp_path) == []  # no folder named 's3:'


def test_without_fsspec_a_url_names_pip_install_fsspec(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if fsspec were not installed
    with pytest.raises(ConfigurationError, match=r"fabric.save\('memory://x.ckpt'\) names a memory:// URL, which "
                                                 r"fabric_lite reads and writes through fsspec, but fsspec is not "
                                                 r"installed. Fix: pip install fsspec"):
        Fabric(accelerator="cpu").save("memory://x.ckpt", {"model": nn.Linear(2, 1)})
    assert os.listdir(tmp_path) == []


def test_a_url_made_into_a_pathlib_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"got a pathlib path that starts with 's3:/': a URL made into a Path "
                                                 r"loses a slash.*Fix: pass the URL as a string, e.g. "
                                                 r"'s3://bucket/last.ckpt'"):
        Fabric(accelerator="cpu").save(Path("s3://bucket/last.ckpt"), {"model": nn.Linear(2, 1)})
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------ latest_checkpoint at a URL
@pytest.mark.parametrize("protocol", ["memory", "file"])
def test_latest_checkpoint_at_a_url_returns_the_newest_intact_one_as_a_url(protocol, run_id, tmp_path):
    from fabric_lite.checkpoint import latest_checkpoint

    folder = f"file://{tmp_path}/{run_id}" if protocol == "file" else f"memory://{run_id}"
    fs, root = fsspec.core.url_to_fs(folder)
    for step in (1, 2, 3):
        atomic_save({"step": step}, f"{folder}/step-{step}.ckpt")
        if protocol == "file":  # distinct modification times even on a coarse file system clock
            os.utime(f"{root}/step-{step}.ckpt", ns=(step * 10**9,) * 2)
    fs.pipe_file(f"{root}/notes.txt", b"not a checkpoint")
    fs.pipe_file(f"{root}/.step-4.ckpt.abcd.tmp", b"PK\x03\x04 a temporary file left by a killed save")
    assert latest_checkpoint(folder) == f"{folder}/step-3.ckpt"
    assert load_checkpoint_file(latest_checkpoint(folder)) == {"step": 3}

    data = fs.cat_file(f"{root}/step-3.ckpt")
    fs.rm_file(f"{root}/step-3.ckpt")
    fs.pipe_file(f"{root}/step-3.ckpt", data[: len(data) // 2])  # cut off: the newest, but damaged
    if protocol == "file":
        os.utime(f"{root}/step-3.ckpt", ns=(4 * 10**9,) * 2)
    with pytest.warns(UserWarning, match=rf"latest_checkpoint\('{folder}'\) skipped '{folder}/step-3.ckpt': it is not "
                                         rf"an intact torch checkpoint.*Fix: delete it"):
        assert latest_checkpoint(folder) == f"{folder}/step-2.ckpt"


def test_latest_checkpoint_of_a_missing_url_folder_says_so(run_id):
    from fabric_lite.checkpoint import latest_checkpoint

    with pytest.raises(CheckpointError, match=rf"latest_checkpoint\('memory://{run_id}'\) needs a folder of checkpoints, "
                                              rf"but it does not exist. Fix: pass the folder"):
        latest_checkpoint(f"memory://{run_id}")
