"""Saving to a full disk, a read-only file system or a folder this user may not write: one CheckpointError in plain
words; the checkpoint already at the path stays intact and no temporary file is left.

Before: ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598`` for a full disk
and a bare ``OSError`` for a read-only one. The disks here are real: a small tmpfs mounted for the test (root
only; skipped with the reason otherwise), remounted read-only; permissions are tested as the user 'nobody'.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import checkpoint_helpers
import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.errors import CheckpointError

KEPT = "The checkpoint at that path (if any) is unchanged and no partial file was left."


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a real file system that fills up."""
    with checkpoint_helpers.small_disk(tmp_path) as disk:
        yield disk


def test_a_full_disk_says_so_and_keeps_the_old_checkpoint(small_disk):
    fabric = Fabric(accelerator="cpu")
    path = small_disk / "last.ckpt"
    fabric.save(path, {"w": torch.ones(1000), "step": 1})
    message = (f"fabric.save({str(path)!r}) could not write {str(path)!r}: the disk is full (No space left on device). "
               f"{KEPT} Fix: free space on the disk of {str(small_disk)!r} or save elsewhere.")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        fabric.save(path, {"w": torch.ones(200_000), "step": 2})  # 800 KB
    assert os.listdir(small_disk) == ["last.ckpt"]
    loaded = fabric.load(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(1000))
    # a new file on the full disk: nothing is left behind either
    with pytest.raises(CheckpointError, match=re.escape("the disk is full (No space left on device)")):
        fabric.save(small_disk / "other.ckpt", {"w": torch.ones(200_000)})
    assert os.listdir(small_disk) == ["last.ckpt"]


def test_a_read_only_file_system_says_so_and_keeps_the_old_checkpoint(small_disk):
    fabric = Fabric(accelerator="cpu")
    path = small_disk / "last.ckpt"
    fabric.save(path, {"step": 1})
    result = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {result.stderr.strip()}")
    message = (f"fabric.save({str(path)!r}) could not write {str(path)!r}: the file system is read-only (Read-only file "
               f"system). {KEPT} Fix: save to a writable folder ({str(small_disk)!r} is on a read-only mount).")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        fabric.save(path, {"step": 2})
    nested = small_disk / "runs" / "a.ckpt"  # the folder would have to be made first
    with pytest.raises(CheckpointError, match=re.escape(f"could not write {str(nested)!r}: the file system is read-only")):
        fabric.save(nested, {"step": 2})
    assert os.listdir(small_disk) == ["last.ckpt"] and fabric.load(path)["step"] == 1


def test_a_folder_this_user_may_not_write_says_so():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the save as the user 'nobody' (root may write anywhere)")
    base = Path(tempfile.mkdtemp(prefix="fabric_lite_perm_"))  # outside pytest's root-only tmp folder
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        torch.save({"step": 1}, locked / "last.ckpt")
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
                "from fabric_lite import Fabric\n"
                f"Fabric(accelerator='cpu').save({str(locked / 'last.ckpt')!r}, {{'step': 2}})\n")
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                                capture_output=True, text=True, timeout=120, check=False)
        path = str(locked / "last.ckpt")
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"fabric_lite.errors.CheckpointError: fabric.save({path!r}) could not write {path!r}: this user may not write "
            f"there (Permission denied). {KEPT} Fix: save to a folder you may write to, or change the permissions of "
            f"{str(locked)!r}.")
        assert os.listdir(locked) == ["last.ckpt"] and torch.load(locked / "last.ckpt")["step"] == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_probe_finds_the_full_disk_behind_an_error_that_hides_it(small_disk):
    """torch's writer may report only 'unexpected pos'; the probe write to the same (temporary) file names ENOSPC."""
    import errno

    from fabric_lite.checkpoint.disk import probe
    from fabric_lite.checkpoint.folder import describe

    with open(small_disk / "filler", "wb") as filler:
        with pytest.raises(OSError):
            while True:
                filler.write(bytes(1 << 16))
                filler.flush()
    with open(small_disk / "probe", "wb") as handle:
        found = probe(handle)
    assert found is not None and found.errno == errno.ENOSPC
    # what DCP hands over from another rank: torch's text only (pickling drops the OSError it came from)
    hidden = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    path = small_disk / "ckpt"
    assert describe(hidden, asked=f"fabric.save({str(path)!r})", path=path) == (
        f"fabric.save({str(path)!r}) could not write {str(path)!r}: the disk is full (No space left on device). The "
        f"checkpoint at that path (if any) is unchanged and the unfinished folder was removed. Fix: free space on the "
        f"disk of {str(small_disk)!r} or save elsewhere.")
    (small_disk / "filler").unlink()
    with open(small_disk / "probe", "wb") as handle:
        assert probe(handle) is None  # room again: nothing to blame on the disk
