"""Smoke test for scripts/bench_csv_logger.py: it runs with a tiny row count and reports times (no ratio asserted).

Lightning is not a test dependency, so the Lightning side is pointed at a folder that does not have it; the script
must then say so and time fabric_lite alone. With Lightning importable it would add a ratio row per logger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_csv_logger_runs_and_checks_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_csv_logger.py"), "--rows", "250", "--repeats", "1",
         "--val-every", "100", "--lightning-path", str(tmp_path / "no-lightning-here"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lightning not importable" in done.stdout and "250 rows" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert result["rows"] == 250 and list(result["medians"]) == ["fabric_lite"]
    assert len(result["seconds"]["fabric_lite"]) == 1 and result["medians"]["fabric_lite"] > 0


def test_bench_csv_logger_rejects_an_unknown_lightning_logger() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_csv_logger.py"), "--rows", "1", "--lightning", "keras"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2 and "--lightning 'keras' is not one of fabric, pytorch" in done.stderr, done.stderr
