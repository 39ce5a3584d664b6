"""A URL given as a checkpoint path is read and written through fsspec, never as a local folder named 's3:'.

Round trips, damage and failed writes at URLs: test_remote_fsspec.py.
"""

from __future__ import annotations

import os

import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError

pytest.importorskip("fsspec", reason="URL checkpoints go through fsspec")


@pytest.mark.parametrize("url", ["memory://url-paths/x.ckpt", "file://{tmp}/sub/x.ckpt"])
def test_save_and_load_at_urls_write_no_local_folder_named_after_the_scheme(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = url.format(tmp=tmp_path)
    fabric = Fabric(accelerator="cpu")
    model = torch.nn.Linear(2, 1)
    fabric.save(url, {"model": model})
    other = torch.nn.Linear(2, 1)
    fabric.load(url, {"model": other})
    assert torch.equal(other.weight, model.weight)
    assert os.listdir(tmp_path) == (["sub"] if url.startswith("file") else [])  # no folder named 'memory:' or 'file:'


@pytest.mark.parametrize("url", ["nosuch://bucket/run/last.ckpt", "nosuch::memory://x.ckpt"])
def test_a_url_that_cannot_work_is_refused_for_every_method_and_writes_nothing(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fabric = Fabric(accelerator="cpu")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigurationError, match=r"fabric.save\('nosuch:.*names a nosuch:// URL.*Fix: use one of"):
        fabric.save(url, {"model": model})
    with pytest.raises(ConfigurationError, match=r"fabric.load\('nosuch:.*Fix:"):
        fabric.load(url, {"model": model})
    with pytest.raises(ConfigurationError, match=r"fabric.load_raw\('nosuch:"):
        fabric.load_raw(url, model)
    assert os.listdir(tmp_path) == []


def test_a_local_folder_whose_name_contains_a_colon_still_works(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model = torch.nn.Linear(2, 1)
    path = tmp_path / "run:1" / "last.ckpt"
    fabric.save(path, {"model": model})
    fabric.load(path, {"model": model})
    assert path.is_file()
