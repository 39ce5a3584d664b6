"""Packaging: the distribution's name and extras as the install hints in errors and docs give them."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fabric_lite.errors import MissingPackageError, missing_package

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "torch-fabric-lite"
# Another project on PyPI: a hint naming it installs the wrong package.
OLD_NAME = "fabric-lite"
# Names that would install something other than this project when a hint means this project.
NOT_US = {OLD_NAME, "fabric_lite", "fabric.lite", "fabric"}
# `pip install [-e] [']NAME[EXTRAS]['] [...]` as written in prose, code, f-strings and docstrings.
HINT = re.compile(r"pip install\s+(?P<editable>-e\s+)?(?P<quote>['\"]?)(?P<name>[A-Za-z0-9_.\-]+)(?:\[(?P<extras>[^\]]*)\])?")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _extras() -> set[str]:
    return set(_pyproject()["project"]["optional-dependencies"])


def _hint_sources() -> list[Path]:
    files = sorted((ROOT / "fabric_lite").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py"))
    return files + [ROOT / "README.md", ROOT / "ARCHITECTURE.md"]


def _hints() -> list[tuple[str, re.Match]]:
    found = []
    for path in _hint_sources():
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for match in HINT.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match))
    return found


def test_the_distribution_is_named_torch_fabric_lite_with_the_extras_the_hints_use():
    project = _pyproject()["project"]
    assert project["name"] == DIST_NAME
    assert {"deepspeed", "xla", "tensorboard", "tuner", "examples", "test"} <= _extras()


def _problems(where: str, match: re.Match, extras: set[str]) -> list[str]:
    """What is wrong with one hint (empty when it is right)."""
    name, wanted = match["name"], match["extras"]
    if wanted is not None and "{" in wanted:
        # a template (errors.missing_package): its extras are checked at every call site below
        return [] if where.startswith("fabric_lite/errors.py") else [f"{where}: templated hint outside errors.py"]
    asked = {e.strip() for e in wanted.split(",")} if wanted else set()
    wrong = []
    if name.lower() in NOT_US:
        wrong.append(f"{where}: {match[0]!r} installs an unrelated PyPI project, not {DIST_NAME!r}")
    elif name in (DIST_NAME, "."):
        if name == "." and not match["editable"]:
            wrong.append(f"{where}: {match[0]!r} from a checkout should be editable: pip install -e '.[extra]'")
        if asked - extras:
            wrong.append(f"{where}: {match[0]!r} names extras {sorted(asked - extras)} not in {sorted(extras)}")
        if asked and not match["quote"]:
            wrong.append(f"{where}: {match[0]!r} needs quotes (zsh expands the brackets)")
    elif wanted is not None:
        wrong.append(f"{where}: {match[0]!r} asks extras of a third-party package; did you mean {DIST_NAME}?")
    # else: a third-party package named directly (pip install s3fs), which is fine
    return wrong


def test_every_pip_install_hint_names_this_distribution_and_an_existing_extra():
    extras = _extras()
    hints = _hints()
    assert len(hints) >= 5, f"the scan found only {[where for where, _ in hints]}; did the files move?"
    wrong = [problem for where, match in hints for problem in _problems(where, match, extras)]
    assert not wrong, "\n".join(wrong)


def _missing_package_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted((ROOT / "fabric_lite").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "missing_package":
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


def test_every_missing_package_error_names_an_existing_extra():
    extras = _extras()
    calls = _missing_package_calls()
    assert len(calls) >= 4, [where for where, _ in calls]
    for where, call in calls:
        arg = next((k.value for k in call.keywords if k.arg == "extra"), call.args[1] if len(call.args) > 1 else None)
        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), f"{where}: extra must be a string literal"
        assert arg.value in extras, f"{where}: extra {arg.value!r} is not in pyproject's {sorted(extras)}"


def test_missing_package_message_gives_both_install_forms():
    error = missing_package("deepspeed", "deepspeed", "DeepSpeedStrategy", hint="or use strategy='ddp'")
    assert isinstance(error, MissingPackageError) and isinstance(error, ImportError)
    assert str(error) == (
        "DeepSpeedStrategy needs the package 'deepspeed', which is not installed. "
        "Fix: pip install 'torch-fabric-lite[deepspeed]' (in a source checkout: pip install -e '.[deepspeed]'); "
        "or use strategy='ddp'."
    )


def test_the_hint_check_catches_the_old_name_unknown_extras_and_missing_quotes():
    extras = _extras()
    for text, problem in [
        ("Fix: pip install 'fabric-lite[tuner]'", "unrelated PyPI project"),
        ("pip install fabric-lite[deepspeed]", "unrelated PyPI project"),
        ("pip install fabric_lite", "unrelated PyPI project"),
        ("pip install -e '.[nope]'", "names extras ['nope']"),
        ("pip install '.[tuner]'", "should be editable"),
        ("pip install torch-fabric-lite[tuner]", "needs quotes"),
        ("pip install 'torchmetrics[deepspeed]'", "did you mean torch-fabric-lite"),
    ]:
        found = _problems("x.py:1", HINT.search(text), extras)
        assert len(found) == 1 and problem in found[0], (text, found)
    for text in ("pip install 'torch-fabric-lite[deepspeed,rich]'", "pip install -e '.[xla]'", "pip install s3fs",
                 "pip install torch-fabric-lite --find-links dist/"):
        assert _problems("x.py:1", HINT.search(text), extras) == [], text


def test_the_declared_torch_floor_is_the_one_ci_tests():
    requirements = _pyproject()["project"]["dependencies"]
    (torch_requirement,) = [r for r in requirements if re.match(r"torch\b", r)]
    floor = re.fullmatch(r"torch>=(\d+\.\d+)", torch_requirement)
    assert floor, f"{torch_requirement!r}: expected torch>=MAJOR.MINOR"
    venv_script = (ROOT / "scripts" / "_xla_venv.sh").read_text()
    tested = re.search(r"FABRIC_LITE_XLA_TORCH_VERSION:-(\d+\.\d+)\.\d+", venv_script)
    assert tested and tested[1] == floor[1], "scripts/test-floor.sh must run on the declared lowest torch"
    assert "bash scripts/test-floor.sh" in (ROOT / ".ci" / "run").read_text()
    assert f"torch {floor[1]} or newer" in (ROOT / "README.md").read_text()
    xla = _pyproject()["project"]["optional-dependencies"]["xla"]
    assert xla == [f"torch_xla>={floor[1]}"]  # torch_xla pins its torch: a lower one could not install with us


# ------------------------------------------------------------------------------------------------ the wheel
def _build_wheel(out: Path) -> Path:
    """Build the wheel as a user would (PEP 517, isolated build env) from a copy of the sources."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "fabric_lite", src / "fabric_lite", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (out / "dist").glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_carries_license_py_typed_metadata_and_both_commands(wheel: Path):
    assert wheel.name.startswith("torch_fabric_lite-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        license_text = archive.read(f"{info}/licenses/LICENSE").decode()
    assert "fabric_lite/py.typed" in names and "fabric_lite/__init__.py" in names
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    headers = [line for line in metadata.splitlines() if ": " in line and not line.startswith(" ")]
    assert "Name: torch-fabric-lite" in headers and "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers and "Classifier: Typing :: Typed" in headers
    assert not any(h.startswith("Classifier: License ::") for h in headers)  # SPDX expression instead
    assert re.search(r"^fabric-run = fabric_lite\.cli:main$", entry_points, re.M)
    assert re.search(r"^fabric = fabric_lite\.cli:fabric_main$", entry_points, re.M)
    # no tests, scripts or examples in the wheel: only the package
    assert {n.split("/")[0] for n in names} == {"fabric_lite", info}
