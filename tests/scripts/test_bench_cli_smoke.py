"""Smoke test of scripts/bench_cli_startup.py: one round against Lightning's `fabric run`, figures and ratios reported
(no ratio asserted: benchmarks are not timed tests, ARCHITECTURE.md "Tests and benchmarks")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REF = Path(os.environ.get("LIGHTNING_REF", Path.home() / ".cache" / "fabric_lite" / "lightning-ref-2.6.6"))


def test_bench_cli_startup_reports_medians_and_ratios(tmp_path: Path) -> None:
    if not (REF / "lightning" / "fabric" / "cli.py").is_file():
        pytest.skip(f"Lightning 2.6.6 (the reference) is not at {REF}: source scripts/_lightning_ref.sh to install it")
    out = tmp_path / "cli.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_cli_startup.py"), "--repeats", "1", "--warmup", "0",
         "--devices", "1", "--lightning-ref", str(REF), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio fabric_lite/lightning, fabric run --devices 1" in done.stdout, done.stdout
    assert "ratio fabric_lite/lightning, import" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert result["lightning"] == "2.6.6"
    assert set(result["median_wall_s"]) == {"fabric_lite run --devices 1", "lightning   run --devices 1",
                                            "import fabric_lite", "import lightning.fabric"}
    assert all(seconds > 0 for seconds in result["median_wall_s"].values())
    assert {"wall", "wall_per_pair", "cpu"} <= set(result["ratios"]["fabric run --devices 1"])


def test_bench_cli_startup_refuses_a_missing_reference(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_cli_startup.py"), "--lightning-ref", str(tmp_path / "none")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2
    assert f"bench_cli_startup: Lightning is not importable from {str(tmp_path / 'none')!r}. Fix: source " in done.stderr
