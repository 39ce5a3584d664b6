"""Collectives misused across ranks raise one clear error on every rank instead of returning garbage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "_scripts" / "gather_misuse.py"


def test_all_gather_dtype_mismatch_raises_on_every_rank(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for seen in ranks:
        for case, first, second in (
            ("float_vs_int", "float32", "int32"),
            ("float_vs_double", "float32", "float64"),
            ("uneven_mismatch", "float32", "float16"),
            ("big_mismatch", "float32", "float64"),
        ):
            assert seen[case]["error"] == "ConfigurationError", seen[case]
            assert f"different dtypes on the 2 ranks (rank 0: {first}, rank 1: {second})" in seen[case]["message"]
            assert "Fix: convert it to one dtype on every rank first" in seen[case]["message"]
        assert seen["after"]["value"] == [[0.0], [1.0]]
        assert seen["fast_path"]["value"] == [[0.0, 0.0], [1.0, 1.0]]
        assert seen["uneven"]["value"] == [0.0, 0.0, 1.0]
        assert seen["big_equal"]["value"] == [0.0, 3000.0]
        assert seen["big_uneven"]["value"] == [1500 + 2500, 2]
        assert seen["mixed_sizes"]["value"] == [1501.0]
        assert seen["bool"]["value"] == [[True, False], [True, True]]
        assert seen["bf16_scalar"]["value"] == [0.5, 1.5]
        assert seen["empty"]["value"] == [1, 2]
