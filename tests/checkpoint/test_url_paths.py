"""A URL given as a checkpoint path is refused instead of being written as a local folder named 's3:'."""

from __future__ import annotations

import os

import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError


@pytest.mark.parametrize("url", ["s3://bucket/run/last.ckpt", "gs://b/x.ckpt", "memory://x.ckpt", "file:///tmp/x.ckpt"])
def test_save_and_load_refuse_urls_and_write_nothing(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fabric = Fabric(accelerator="cpu")
    model = torch.nn.Linear(2, 1)
    scheme = url.split("://")[0]
    with pytest.raises(ConfigurationError, match=rf"fabric.save\('{scheme}://.*names a {scheme}:// URL.*local folder named "
                                                 rf"'{scheme}:'. Fix: save to a local or mounted path"):
        fabric.save(url, {"model": model})
    with pytest.raises(ConfigurationError, match=rf"fabric.load\('{scheme}://.*Fix:"):
        fabric.load(url, {"model": model})
    with pytest.raises(ConfigurationError, match=rf"fabric.load_raw\('{scheme}://"):
        fabric.load_raw(url, model)
    assert os.listdir(tmp_path) == []  # no folder named 's3:' or anything else


def test_a_local_folder_whose_name_contains_a_colon_still_works(tmp_path):
    fabric = Fabric(accelerator="cpu")
    model = torch.nn.Linear(2, 1)
    path = tmp_path / "run:1" / "last.ckpt"
    fabric.save(path, {"model": model})
    fabric.load(path, {"model": model})
    assert path.is_file()
