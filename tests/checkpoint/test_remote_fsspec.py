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
from checkpoint_helpers import small_disk
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


@pytest.mark.parametrize("records", [1, 3000])  # 3000: an index of ~190 KB, written by torch in one piece
def test_a_file_url_writes_the_same_bytes_as_the_local_path(records, tmp_path):
    """The seal computed while streaming to the store equals the one the local writer adds afterwards."""
    state = {"weights": torch.randn(300, 40), "step": 3, **{f"w{i}": torch.randn(4) for i in range(records - 1)}}
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


def test_a_file_at_the_root_of_a_store_names_the_root_as_its_folder(run_id):
    url = f"memory://{run_id}.ckpt"
    atomic_save({"step": 1}, url)
    try:
        fsspec.filesystem("memory").pipe_file(f"/{run_id}.ckpt", b"PK\x03\x04 cut")
        with pytest.raises(CheckpointError, match=rf"fabric.load\('{url}'\) could not read the file: .*Fix: load another "
                                                  rf"checkpoint from 'memory://' \(latest_checkpoint"):
            load_checkpoint_file(url)
    finally:
        fsspec.filesystem("memory").rm_file(f"/{run_id}.ckpt")


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


# ------------------------------------------------------------------------ sharded (FSDP / DCP) folders at URLs
SCRIPT = str(Path(__file__).parent / "_scripts" / "remote_sharded.py")


def run_sharded(out, folder, devices, *extra):
    import json
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, SCRIPT, str(out), folder, str(devices), *extra], capture_output=True,
                            text=True, timeout=240, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads((out / f"result{rank}.json").read_text()) for rank in range(devices)]


@pytest.fixture(scope="module")
def two_ranks_file_url(tmp_path_factory):
    """2 gloo ranks save to and load from a file:// URL through torch's FsspecWriter/FsspecReader.

    memory:// cannot be used here: each process has its own memory store (see one_rank_memory_url).
    """
    out = tmp_path_factory.mktemp("remote_sharded")
    folder = f"file://{out}/store"
    return folder, run_sharded(out, folder, 2)


@pytest.fixture(scope="module")
def one_rank_memory_url(tmp_path_factory):
    out = tmp_path_factory.mktemp("remote_sharded_memory")
    return "memory://sharded", run_sharded(out, "memory://sharded", 1, "--object-store")


def both(ranks, key):
    assert all(rank[key] == ranks[0][key] for rank in ranks), [rank[key] for rank in ranks]
    return ranks[0][key]


@pytest.mark.parametrize("case", ["two_ranks_file_url", "one_rank_memory_url"])
def test_sharded_round_trip_at_a_url(case, request):
    folder, ranks = request.getfixturevalue(case)
    assert both(ranks, "first_step") == 3
    assert both(ranks, "first_model_equal") is True and both(ranks, "first_optimizer_equal") is True
    shards = ["__0_0.distcp", "__1_0.distcp"] if len(ranks) == 2 else ["__0_0.distcp"]
    assert both(ranks, "first_files") == sorted([".metadata", "COMPLETE", "meta.pt", *shards])
    assert both(ranks, "first_siblings") == ["ckpt"]  # no staging (.ckpt.partial) or previous folder left
    assert both(ranks, "after_second_save") == ["ckpt"]
    assert ranks[0]["latest"] == f"{folder}/ckpt"


@pytest.mark.parametrize("case", ["two_ranks_file_url", "one_rank_memory_url"])
def test_a_failed_sharded_save_at_a_url_keeps_the_checkpoint_and_leaves_no_staging_folder(case, request):
    folder, ranks = request.getfixturevalue(case)
    last = len(ranks) - 1
    expected = (f"CheckpointError: fabric.save('{folder}/ckpt') failed: RuntimeError: the last rank cannot give its "
                f"state. The checkpoint at that path (if any) is unchanged and the unfinished folder was removed. Fix: "
                f"resolve that error")
    assert all(rank["failed_save"].startswith(expected) for rank in ranks), [rank["failed_save"] for rank in ranks]
    if len(ranks) == 2:
        assert ranks[0]["failed_save"].endswith(f"[failed on rank {last}]")
    assert both(ranks, "after_failed_save") == ["ckpt"]
    assert both(ranks, "kept_step") == 4 and both(ranks, "kept_equal") is True


@pytest.mark.parametrize("case", ["two_ranks_file_url", "one_rank_memory_url"])
def test_a_flipped_byte_in_a_remote_shard_gives_every_rank_the_same_checkpoint_error(case, request):
    folder, ranks = request.getfixturevalue(case)
    url = f"{folder}/ckpt"
    assert both(ranks, "damaged") == (
        f"CheckpointError: fabric.load({url!r}) refused the sharded checkpoint {url!r}: the checksum of "
        f"{ranks[0]['flipped']} does not match its bytes. Its files were cut off or changed after the save finished. "
        f"Fix: load another checkpoint (latest_checkpoint(folder) names the newest intact one), or save it again.")


def test_a_sharded_save_to_an_object_store_is_written_in_place_with_its_marker_last(one_rank_memory_url):
    _, (rank,) = one_rank_memory_url
    assert rank["object_store_step"] == 3
    assert rank["object_store_model_equal"] is True and rank["object_store_optimizer_equal"] is True
    assert rank["object_store_siblings"] == ["ckpt"]
    assert rank["object_store_second"] == [".metadata", "COMPLETE", "__0_0.distcp", "meta.pt"]


def test_consolidate_merges_a_url_folder_into_a_url_file(one_rank_memory_url):
    folder, (rank,) = one_rank_memory_url
    assert rank["consolidated"] == [f"{folder}/merged.ckpt", 4]
    assert rank["full_file"] == [6, True]  # FSDPStrategy(state_dict_type="full") saves and loads one file at a URL


@pytest.mark.parametrize("call", ["save", "load"])
def test_deepspeed_folders_at_a_url_are_refused_with_the_fix(call):
    from fabric_lite.checkpoint import deepspeed as folders

    with pytest.raises(ConfigurationError, match=rf"fabric.{call}\('memory://ds/ckpt'\) names a memory:// URL, but "
                                                 rf"DeepSpeed checkpoints \(folders the engine (writes|reads)\) are "
                                                 rf"written and read by code that takes local paths only. Fix: save to "
                                                 rf"a local or mounted path"):
        if call == "save":
            folders.save_checkpoint(None, "memory://ds/ckpt", {})  # refused before the strategy is used
        else:
            folders.load_checkpoint(None, "memory://ds/ckpt", {})


@pytest.mark.parametrize("protocol", ["memory", "file"])
def test_checkpoint_exists_and_remove_checkpoint_work_on_urls_and_local_paths(protocol, run_id, tmp_path):
    from fabric_lite.checkpoint import checkpoint_exists, remove_checkpoint
    from fabric_lite.checkpoint.folder import MARKER

    folder = f"file://{tmp_path}/{run_id}" if protocol == "file" else f"memory://{run_id}"
    fs, root = fsspec.core.url_to_fs(folder)
    atomic_save({"step": 1}, f"{folder}/a.ckpt")
    fs.makedirs(f"{root}/sharded", exist_ok=True)
    fs.pipe_file(f"{root}/sharded/{MARKER}", b"marker")
    fs.pipe_file(f"{root}/sharded/__0_0.distcp", b"shard")
    assert checkpoint_exists(f"{folder}/a.ckpt") and checkpoint_exists(f"{folder}/sharded")
    assert not os.path.exists(f"{folder}/a.ckpt")  # what the standard library says of any URL
    remove_checkpoint(f"{folder}/a.ckpt")
    remove_checkpoint(f"{folder}/sharded")
    remove_checkpoint(f"{folder}/never-written.ckpt")  # nothing there: nothing to do
    assert not checkpoint_exists(f"{folder}/a.ckpt") and not checkpoint_exists(f"{folder}/sharded")
    local = tmp_path / "local.ckpt"
    atomic_save({"step": 1}, local)
    assert checkpoint_exists(local)
    remove_checkpoint(local)
    assert not local.exists()


def test_a_file_url_on_a_full_disk_says_so_in_plain_words_and_keeps_the_old_file(tmp_path):
    with small_disk(tmp_path) as disk:
        url = f"file://{disk}/last.ckpt"
        atomic_save({"step": 1}, url)
        with pytest.raises(CheckpointError, match=rf"fabric.save\('{url}'\) could not write '{disk}/last.ckpt': the disk "
                                                  rf"is full \(No space left on device\). The checkpoint at that URL "
                                                  rf"\(if any\) is unchanged and no temporary file was left. Fix: free "
                                                  rf"space"):
            atomic_save({"step": 2, "weights": torch.randn(200_000)}, url)  # 800 KB on a 256 KB disk
        assert os.listdir(disk) == ["last.ckpt"]
        assert load_checkpoint_file(url) == {"step": 1}
