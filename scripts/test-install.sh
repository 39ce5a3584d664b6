#!/usr/bin/env bash
# Install as a user would (issue 16's "done when"): build the wheel, make a FRESH venv, install torch and the
# wheel BY ITS NAME (`pip install torch-fabric-lite --find-links dist/`), then run the installed commands
# `fabric-run --dry-run` and `fabric --help` from a folder outside the clone. Run by .ci/run (~35 s, most of
# it installing torch: too slow for the pytest suite). Exits non-zero on the first check that fails.
#
# Environment: FABRIC_LITE_TORCH_VERSION (default 2.13.0, the CPU wheel the project is developed with).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
source scripts/_venv.sh "test,examples,tensorboard"   # a Python with pip, to build and install with
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
fail() { echo "[install] FAIL: $*" >&2; exit 1; }

# 1. the wheel, built (PEP 517, isolated) from a copy of what the sdist would hold, not from the work tree
mkdir "$WORK/src"
tar --exclude=__pycache__ -cf - pyproject.toml README.md LICENSE fabric_lite | tar -xf - -C "$WORK/src"
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src" 2>&1 | grep -v "^WARNING: Location" || true
WHEEL="$(ls "$WORK"/dist/torch_fabric_lite-*.whl)" || fail "no torch_fabric_lite wheel was built"
VERSION="$("$PY" -c "import sys; print(sys.argv[1].split('-')[1])" "$(basename "$WHEEL")")"
echo "[install] built $(basename "$WHEEL") in $(( $(date +%s) - started )) s"

# 2. a fresh venv (no pip of its own: the project's pip installs into it with --python), torch, then the wheel
#    by name; the version pin keeps pip from preferring some other upload of that name on the index
"${PYTHON:-python3}" -m venv --without-pip "$WORK/venv"
FRESH="$WORK/venv/bin/python"
"$PY" -m pip --python "$FRESH" install -q --no-compile "torch==${FABRIC_LITE_TORCH_VERSION:-2.13.0}" \
  "torch-fabric-lite==$VERSION" --find-links "$WORK/dist" 2>&1 | grep -v "^WARNING: Location" || true
echo "[install] fresh venv with torch and torch-fabric-lite==$VERSION after $(( $(date +%s) - started )) s"

# 3. what got installed is this wheel's package, by the new name, and the unrelated 'fabric-lite' is absent
cd "$WORK"
"$FRESH" - "$ROOT" <<'PY' || fail "the installed package is not the one just built (see above)"
import hashlib, importlib.metadata as metadata, pathlib, sys
import fabric_lite
root = pathlib.Path(sys.argv[1])
installed = pathlib.Path(fabric_lite.__file__).parent
assert installed.is_relative_to(pathlib.Path(sys.prefix)), f"fabric_lite imported from {installed}, not the venv"
assert (installed / "py.typed").is_file(), "py.typed is missing"
same = hashlib.sha256((installed / "fabric.py").read_bytes()).digest() == hashlib.sha256((root / "fabric_lite" / "fabric.py").read_bytes()).digest()
assert same, "the installed fabric_lite/fabric.py differs from the clone's"
assert metadata.version("torch-fabric-lite") == fabric_lite.__version__
names = {d.metadata["Name"] for d in metadata.distributions()}
assert "fabric-lite" not in names, f"the unrelated 'fabric-lite' got installed: {sorted(names)}"
print(f"[install] import fabric_lite {fabric_lite.__version__} from {installed}")
PY
printf 'from fabric_lite import Fabric\nfabric = Fabric()\nfabric.launch()\n' > train.py
OUT="$("$WORK/venv/bin/fabric-run" --dry-run --accelerator cpu --devices 2 train.py)" || fail "fabric-run --dry-run exited $?"
grep -q "strategy  *ddp" <<<"$OUT" || fail "fabric-run --dry-run printed no ddp plan: $OUT"
grep -q -- "--nproc-per-node=2" <<<"$OUT" || fail "fabric-run --dry-run printed no torchrun command: $OUT"
echo "[install] fabric-run --dry-run: plan and command printed"
# a short real run of the installed package: one process, a DataLoader worker, save and load
cat > loop.py <<'PY'
import torch
from torch.utils.data import DataLoader, TensorDataset
from fabric_lite import Fabric

fabric = Fabric(accelerator="cpu")
model = torch.nn.Linear(4, 1)
model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
loader = fabric.setup_dataloaders(DataLoader(data, batch_size=8, num_workers=1))
for step, (x, y) in enumerate(loader):
    fabric.backward(torch.nn.functional.mse_loss(model(x), y))
    optimizer.step()
    optimizer.zero_grad()
    if step == 1:
        fabric.save("last.ckpt", {"model": model, "optimizer": optimizer, "loader": loader, "step": step})
assert fabric.load("last.ckpt", {"model": model, "optimizer": optimizer})["step"] == 1
print("[install] a training loop with a worker DataLoader saved and loaded a checkpoint")
PY
"$FRESH" loop.py || fail "the training loop failed in the fresh venv"
HELP="$("$WORK/venv/bin/fabric" --help)" || fail "fabric --help exited $?"
grep -q "run" <<<"$HELP" && grep -q "consolidate" <<<"$HELP" || fail "fabric --help lists no run/consolidate: $HELP"
echo "[install] fabric --help lists run and consolidate"
echo "[install] PASS in $(( $(date +%s) - started )) s"
