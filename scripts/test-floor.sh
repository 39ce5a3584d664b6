#!/usr/bin/env bash
# The single-process tests on the LOWEST torch that pyproject.toml declares (torch 2.9), in the torch 2.9
# venv that scripts/test-xla.sh uses too (scripts/_xla_venv.sh; torch_xla is installed there but these tests
# do not select an XLA device). The main suite (scripts/test.sh) runs on torch 2.13.
#
# What runs here (~45-65 s): Fabric's single-process API and wrappers, every precision plugin, single-process
# save/load (also crash safety of one writer and the safe loader, sharded folders included), URL paths, RNG
# state, error messages, the strategy/plugin import paths, all_gather at world size 1 (also a real one-rank
# gloo process group), and one 2-process DDP job started by fabric-run (torchrun: training, gather, reduce,
# broadcast). Not here: FSDP, DeepSpeed, the other launchers, the Trainer, loggers, SLURM. Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_xla_venv.sh
unset PJRT_DEVICE
TESTS=(
  tests/test_fabric.py tests/test_wrappers.py tests/test_errors.py tests/test_misuse.py tests/test_imports.py
  tests/precision
  tests/checkpoint/test_save_load.py tests/checkpoint/test_safe_load.py tests/checkpoint/test_url_paths.py
  tests/utilities/test_rng_state.py
  tests/strategies/test_all_gather_single.py
  "tests/strategies/test_ddp.py::test_two_ranks_under_every_launcher[fabric-run]"
)
"$PY" -c "import torch; print('[floor] torch', torch.__version__)"
exec "$PY" -m pytest -q -p no:cacheprovider -m "not xla and not cuda and not slurm" "${TESTS[@]}" "$@"
