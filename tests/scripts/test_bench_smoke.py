"""Smoke tests for the benchmark scripts: they run, write what they promise and find no heavy imports.

Benchmarks are not timed tests (ARCHITECTURE.md, "Tests and benchmarks"): no ratio is asserted here, only that one is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_overhead_writes_rows_with_times_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_overhead.py"), "--rounds", "2", "--steps", "5", "--device", "cpu",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio" in done.stdout and "torch.allclose: OK" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    rows = {(r["case"], r["precision"], r["device"]): r for r in result["rows"]}
    assert set(rows) == {("tiny-mlp", "32-true", "cpu"), ("tiny-mlp", "bf16-mixed", "cpu")}
    for row in rows.values():
        assert row["raw_ms"] > 0 and row["fabric_ms"] > 0
        assert row["ratio_median_of_rounds"] > 0 and row["ratio_of_medians"] > 0
        assert row["goal"] == 1.02 and row["verdict"] in ("PASS", "FAIL")
        assert len(row["raw_ms_rounds"]) == len(row["fabric_ms_rounds"]) == 2
    assert rows[("tiny-mlp", "32-true", "cpu")]["params_match"] is True
    assert result["params_match"] is True
    assert any(s.startswith("gpt on cpu: skipped") for s in result["skipped"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="bench_import.sh needs bash")
def test_bench_import_reports_no_heavy_modules() -> None:
    env = {**os.environ, "FABRIC_LITE_BENCH_REPEATS": "2", "FABRIC_LITE_BENCH_PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bench_import.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "heavy modules after import fabric_lite: none" in done.stdout, done.stdout
    assert "ratio fabric_lite/torch:" in done.stdout, done.stdout


def test_bench_multigpu_on_two_cpu_processes_reports_ratios_and_checks(tmp_path: Path) -> None:
    """bench_multigpu.py under fabric-run (2 CPU ranks, gloo): rows per strategy, collectives, sharded 2 -> 1."""
    out, ckpt = tmp_path / "n2.json", tmp_path / "ckpt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fabric_run = [sys.executable, "-m", "fabric_lite.cli"]
    done = subprocess.run(
        [*fabric_run, "--accelerator", "cpu", "--devices", "2", str(ROOT / "scripts" / "bench_multigpu.py"),
         "--cpu-smoke", "--strategies", "ddp,fsdp", "--rounds", "2", "--steps", "2", "--warmup", "1", "--checks",
         "--save-sharded", str(ckpt), "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(out.read_text())
    assert [r["strategy"] for r in result["rows"]] == ["ddp", "fsdp"]
    for row in result["rows"]:
        assert row["world_size"] == 2 and row["raw_ms"] > 0 and row["fabric_ms"] > 0 and row["throughput_ratio"] > 0
        assert row["params_agree"] is True and row["param_relative_distance"] < 1e-5
    assert result["collectives_agree"] is True and result["sharded_saved_at"] == 2
    loaded = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_overhead.py"), "--strategy", "", "--cpu-smoke",
         "--load-sharded", str(ckpt)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert loaded.returncode == 0, loaded.stdout[-3000:] + loaded.stderr[-5000:]
    assert '"sharded_loaded_from": 2, "sharded_loaded_at": 1, "step": 3, "sharded_probe_matches": true' in loaded.stdout
