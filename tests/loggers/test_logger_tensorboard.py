"""TensorBoardLogger: event files read back with TensorBoard's own reader, lazy import, versions, rank zero."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fabric_lite.errors import ConfigurationError, MissingPackageError
from fabric_lite.loggers import Logger, TensorBoardLogger
from fabric_lite.loggers.csv import load_hparams_from_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def load_events(directory: str):  # -> EventAccumulator
    pytest.importorskip("tensorboardX", reason="TensorBoardLogger writes through tensorboardX")
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="reading event files needs tensorboard"
    )
    accumulator = event_accumulator.EventAccumulator(directory)
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, pytest.approx(event.value)) for event in accumulator.Scalars(tag)]


def test_import_does_not_import_tensorboardx() -> None:
    result = run_python("import fabric_lite.loggers, sys; assert 'tensorboardX' not in sys.modules, 'imported'")
    assert result.returncode == 0, result.stderr


def test_neither_tensorboardx_nor_tensorboard_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # what find_spec sees when a package is absent
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    expected = (r"TensorBoardLogger needs the package 'tensorboardX'.*pip install 'torch-fabric-lite\[tensorboard\]'"
                r".*or pip install tensorboard \(then torch.utils.tensorboard writes the events\)")
    with pytest.raises(MissingPackageError, match=expected):
        TensorBoardLogger(tmp_path)


# A meta-path finder in the child only: tensorboardX cannot be imported there, as if it were not installed.
BLOCK_TENSORBOARDX = """
    import sys
    class BlockTensorboardX:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorboardX" or name.startswith("tensorboardX."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, BlockTensorboardX())
"""


def test_falls_back_to_torch_utils_tensorboard_without_tensorboardx(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the fallback writes through torch.utils.tensorboard, which needs it")
    plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")
    code = BLOCK_TENSORBOARDX + f"""
    import torch
    from fabric_lite.loggers import TensorBoardLogger
    logger = TensorBoardLogger({str(tmp_path)!r})
    logger.log_hyperparams({{"lr": 0.5, "optim": {{"name": "sgd"}}}})
    logger.log_metrics({{"loss": torch.tensor(0.25)}}, step=3)
    logger.log_metrics({{"loss": 0.125}}, step=4)
    logger.experiment.add_image("sample", torch.zeros(3, 4, 5), 4)
    logger.log_graph(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    logger.finalize("success")
    print(type(logger.experiment).__module__, "tensorboardX" in sys.modules)
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torch.utils.tensorboard.writer", "False"]

    events = load_events(str(tmp_path / "lightning_logs" / "version_0"))
    assert scalars(events, "loss") == [(3, 0.25), (4, 0.125)]
    assert scalars(events, "hp_metric") == [(0, -1.0)]
    assert [(image.step, image.width, image.height) for image in events.Images("sample")] == [(4, 5, 4)]
    assert events.Tags()["graph"] is True
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert (hparams["lr"].number_value, hparams["optim/name"].string_value) == (0.5, "sgd")


def test_layout_and_lazy_writer(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    logger = TensorBoardLogger(tmp_path, name="exp", sub_dir="train")
    assert isinstance(logger, Logger)
    assert (logger.name, logger.version, logger.sub_dir) == ("exp", 0, "train")
    assert logger.root_dir == str(tmp_path / "exp")
    assert logger.log_dir == str(tmp_path / "exp" / "version_0" / "train")
    assert not (tmp_path / "exp").exists(), "the SummaryWriter is made on the first write"
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(logger.log_dir))


def test_versions(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    first = TensorBoardLogger(tmp_path)
    first.log_metrics({"x": 1.0}, step=0)
    first.finalize("success")
    assert TensorBoardLogger(tmp_path).version == 1
    (tmp_path / "lightning_logs" / "version_41").mkdir()
    assert TensorBoardLogger(tmp_path).version == 42
    assert TensorBoardLogger(tmp_path, version="run_a").log_dir == str(tmp_path / "lightning_logs" / "run_a")
    assert TensorBoardLogger(tmp_path, name="", version=5).log_dir == str(tmp_path / "version_5")


def test_scalars_round_trip(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 0.25}, step=3)
    logger.log_metrics({"loss": 0.125, "acc": torch.tensor([1.0])}, step=7)
    logger.log_metrics({"loss": 0.0625})  # default step: number of earlier log_metrics calls
    logger.finalize("success")

    events = load_events(logger.log_dir)
    assert sorted(events.Tags()["scalars"]) == ["train-acc", "train-loss"]
    assert scalars(events, "train-loss") == [(3, 0.5), (7, 0.125), (2, 0.0625)]
    assert scalars(events, "train-acc") == [(3, 0.25), (7, 1.0)]


def test_dict_value_is_written_with_add_scalars(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": {"train": 1.5, "val": torch.tensor(2.5)}}, step=4)
    logger.finalize("success")
    # tensorboardX's add_scalars writes one run per key: <log_dir>/<main tag>/<key>, tag = main tag.
    assert scalars(load_events(os.path.join(logger.log_dir, "loss", "train")), "loss") == [(4, 1.5)]
    assert scalars(load_events(os.path.join(logger.log_dir, "loss", "val")), "loss") == [(4, 2.5)]


def test_non_numeric_metric_raises(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ConfigurationError, match=r"log_metrics\(\{'name': 'sgd'\}\) cannot be logged"):
        logger.log_metrics({"name": "sgd"}, step=0)


def test_hyperparameters_in_the_run_itself(tmp_path: Path) -> None:
    plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": torch.tensor(0.5), "optim": {"name": "sgd", "nesterov": True}, "layers": [2, 3]})
    logger.finalize("success")

    assert [p.name for p in Path(logger.log_dir).iterdir() if p.is_dir()] == [], "no separate hparams run folder"
    events = load_events(logger.log_dir)
    assert scalars(events, "hp_metric") == [(0, -1.0)]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == 0.5
    assert hparams["optim/name"].string_value == "sgd"
    assert hparams["optim/nesterov"].bool_value is True
    assert hparams["layers"].string_value == "[2, 3]"
    assert load_hparams_from_yaml(os.path.join(logger.log_dir, "hparams.yaml")) == {
        "lr": 0.5, "optim": {"name": "sgd", "nesterov": True}, "layers": [2, 3]}


def test_hyperparameters_with_metrics_and_without_default(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_hyperparams({"lr": 0.1}, metrics={"val_acc": 0.75})
    logger.finalize("success")
    events = load_events(logger.log_dir)
    assert events.Tags()["scalars"] == ["val_acc"]
    assert scalars(events, "val_acc") == [(0, 0.75)]


def test_log_graph(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    logger.log_graph(model, torch.zeros(1, 4))
    logger.finalize("success")
    assert load_events(logger.log_dir).Tags()["graph"] is True


def test_log_graph_is_best_effort(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    logger = TensorBoardLogger(tmp_path)
    with pytest.warns(UserWarning, match=r"needs an example input.*example_input_array"):
        logger.log_graph(nn.Linear(2, 2))
    with pytest.warns(UserWarning, match="could not trace the model"):
        logger.log_graph(nn.Linear(2, 2), torch.zeros(1, 3))  # wrong width: tracing fails
    logger.finalize("success")


def test_pickles_without_the_writer(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.log_dir == logger.log_dir and copy._experiment is None
    logger.finalize("success")


def test_rank_nonzero_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    code = f"""
        import torch
        from fabric_lite.loggers import TensorBoardLogger
        logger = TensorBoardLogger({str(tmp_path)!r})
        logger.log_hyperparams({{"lr": 0.1}})
        logger.log_metrics({{"loss": 1.0, "pair": {{"a": 1.0}}}}, step=0)
        logger.log_graph(torch.nn.Linear(2, 2), torch.zeros(1, 2))
        logger.experiment.add_scalar("direct", 1.0, 0)
        logger.save()
        logger.finalize("success")
        print(logger.log_dir)
    """
    result = run_python(code, RANK="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("version_0")
    assert list(tmp_path.iterdir()) == []
