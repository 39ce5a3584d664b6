"""Profilers: Trainer(profiler="simple" | "advanced" | "pytorch") and profiler objects, their real reports and trace file."""

from __future__ import annotations

import io
import json
import logging
import pstats
import re

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.profilers import AdvancedProfiler, PassThroughProfiler, PyTorchProfiler, SimpleProfiler


@pytest.fixture
def fabric_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("fabric_lite")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def rows(report: str) -> dict[str, list[str]]:
    """Action -> its cells, from a SimpleProfiler table."""
    found = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("Action",):
            found[cells[0]] = cells[1:]
    return found


def test_simple_profiler_logs_a_table_of_every_hook_at_the_end_of_fit(tmp_path, fabric_log):
    trainer = quiet_trainer(tmp_path, max_epochs=2, profiler="simple", num_sanity_val_steps=2)
    assert isinstance(trainer.profiler, SimpleProfiler)
    trainer.fit(Regressor(), loader(16, 4), loader(8, 4))
    report = fabric_log.getvalue()
    assert report.startswith("FIT Profiler Report")
    assert re.search(r"\|  Action\s+\|  Mean duration \(s\)\s+\|  Num calls\s+\|  Total time \(s\)\s+\|  Percentage %", report)
    table = rows(report)
    assert table["training_step"][1] == "8" and table["run_training_batch"][1] == "8"  # 4 batches x 2 epochs
    assert table["run_training_epoch"][1] == "2" and table["validation_step"][1] == "6"  # 2 sanity + 2 x 2
    assert table["optimizer_step"][1] == "8" and table["on_train_epoch_start"][1] == "2"
    assert table["Total"][0] == "-" and table["Total"][3] == "100 %"
    mean, calls, total, percent = table["training_step"]
    assert float(mean) * 8 == pytest.approx(float(total), rel=1e-3) and 0 < float(percent) < 100
    totals = [float(cells[2]) for action, cells in table.items() if action != "Total"]
    assert totals == sorted(totals, reverse=True)  # the slowest first


def test_simple_profiler_writes_one_file_per_stage(tmp_path, fabric_log):
    profiler = SimpleProfiler(dirpath=tmp_path / "perf", filename="perf_logs")
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler=profiler)
    assert trainer.profiler is profiler
    model = Regressor()
    trainer.fit(model, loader(8, 4))
    trainer.test(model, loader(8, 4), verbose=False)
    fit_report = (tmp_path / "perf" / "fit-perf_logs.txt").read_text()
    test_report = (tmp_path / "perf" / "test-perf_logs.txt").read_text()
    assert rows(fit_report)["training_step"][1] == "2" and "test_step" not in fit_report
    assert rows(test_report)["test_step"][1] == "2" and "training_step" not in test_report and "teardown" not in rows(test_report)
    assert "Profiler Report" not in fabric_log.getvalue()  # written to the files instead


def test_simple_profiler_reports_a_failed_fit(tmp_path, fabric_log):
    class Failing(Regressor):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler="simple")
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), loader(8, 4))
    table = rows(fabric_log.getvalue())  # reported on the exception; the failing batch counts up to its failure
    assert table["run_training_batch"][1] == "2" and table["training_step"][1] == "2" and "on_train_end" not in table


def test_advanced_profiler_writes_pstats_per_action(tmp_path):
    profiler = AdvancedProfiler(dirpath=tmp_path, filename="adv", dump_stats=True)
    quiet_trainer(tmp_path, max_epochs=1, profiler=profiler).fit(Regressor(), loader(8, 4))
    report = (tmp_path / "fit-adv.txt").read_text()
    assert report.startswith("FIT Profiler Report")
    assert "Profile stats for: training_step" in report and "Profile stats for: optimizer_step" in report
    assert "function calls" in report and "Ordered by: cumulative time" in report
    step_listing = report.split("Profile stats for: training_step")[1].split("Profile stats for:")[0]
    assert "(mse_loss)" in step_listing and "(backward)" not in step_listing  # backward runs in its own action
    stats = pstats.Stats(str(tmp_path / "fit-adv-training_step.prof"))
    assert any(name == "mse_loss" for (_, _, name) in stats.stats)  # a real cProfile dump


def test_advanced_profiler_by_name_logs_its_report(tmp_path, fabric_log):
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler="advanced")
    assert isinstance(trainer.profiler, AdvancedProfiler)
    trainer.fit(Regressor(), loader(8, 4))
    assert "Profile stats for: training_step" in fabric_log.getvalue()
    limited = AdvancedProfiler(line_count_restriction=2)
    with limited.profile("work"):
        sorted(range(10))
        list(range(3))
        max(range(4))
    assert "List reduced from" in limited.summary() and "due to restriction <2>" in limited.summary()


def test_pytorch_profiler_writes_a_chrome_trace_and_a_table(tmp_path, fabric_log):
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler=PyTorchProfiler(dirpath=tmp_path / "trace", row_limit=40))
    trainer.fit(Regressor(), loader(8, 4))
    trace = tmp_path / "trace" / "fit.pt.trace.json"
    assert trainer.profiler.trace_path == str(trace)
    events = json.loads(trace.read_text())["traceEvents"]  # what Perfetto / chrome://tracing / TensorBoard read
    names = {event.get("name") for event in events}
    missing = {"training_step", "optimizer_step", "[module]Linear: layer", "aten::mse_loss"} - names
    assert not missing, (missing, sorted(n for n in names if n and not n.startswith("aten::"))[:50])
    steps = [e for e in events if e.get("name") == "training_step" and e.get("ph") == "X"]
    assert len(steps) == 2, steps
    report = fabric_log.getvalue()
    # 40 rows: with 10 the top rows by CPU total can all be the Trainer's own actions (seen once), leaving no aten op
    assert "FIT Profiler Report" in report and "Self CPU" in report and "aten::" in report, report[:2000]
    # by name: the default place is the Trainer's log_dir (default_root_dir without a logger)
    trainer = quiet_trainer(tmp_path / "named", max_epochs=1, profiler="pytorch")
    trainer.fit(Regressor(), loader(8, 4))
    assert "traceEvents" in json.loads((tmp_path / "named" / "fit.pt.trace.json").read_text())


def test_unknown_profiler_lists_the_choices(tmp_path):
    with pytest.raises(ConfigurationError, match=r"Trainer\(profiler='fancy'\) is not a known profiler. Choose one of: "
                                                 r"'simple', 'advanced', 'pytorch', None"):
        quiet_trainer(tmp_path, profiler="fancy")
    with pytest.raises(ConfigurationError, match=r"Trainer\(profiler=3\) is not a known profiler"):
        quiet_trainer(tmp_path, profiler=3)
    assert isinstance(quiet_trainer(tmp_path).profiler, PassThroughProfiler)


def test_profile_context_and_misuse():
    profiler = SimpleProfiler()
    with profiler.profile("outer"):
        with profiler.profile("outer"):  # the same name nested (a hook calling a nested run)
            torch.ones(1)
    assert len(profiler.recorded_durations["outer"]) == 2
    with pytest.raises(ValueError, match=r"SimpleProfiler.stop\('never'\): that action was never started"):
        profiler.stop("never")
    with pytest.raises(ValueError, match=r"AdvancedProfiler.stop\('never'\): that action was never started"):
        AdvancedProfiler().stop("never")
    with pytest.raises(ValueError, match=r"PyTorchProfiler.stop\('never'\): that action was never started"):
        PyTorchProfiler().stop("never")


def test_pytorch_profiler_schedule_records_a_window(tmp_path):
    """Lightning's default window (wait 1, warmup 1, active 3) given as a schedule: only those steps are in the trace."""
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1)
    profiler = PyTorchProfiler(dirpath=tmp_path, filename="win", schedule=schedule, record_module_names=False)
    quiet_trainer(tmp_path, max_epochs=1, profiler=profiler).fit(Regressor(), loader(40, 4))  # 10 steps
    assert profiler.trace_paths == [str(tmp_path / "fit-win-cycle0.pt.trace.json")]
    events = json.loads((tmp_path / "fit-win-cycle0.pt.trace.json").read_text())["traceEvents"]
    assert sum(1 for e in events if e.get("name") == "training_step" and e.get("ph") == "X") == 3
    assert "aten::mse_loss" in (tmp_path / "fit-win.txt").read_text()  # the table of the recorded window
