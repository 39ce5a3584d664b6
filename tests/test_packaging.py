"""Packaging: the distribution's name and extras as the install hints in errors and docs give them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fabric_lite.errors import MissingPackageError, missing_package

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "torch-fabric-lite"
# Another project on PyPI: a hint naming it installs the wrong package.
OLD_NAME = "fabric-lite"
# Third-party packages a hint may name directly (no extra of ours installs them), with the reason.
PLAIN_PACKAGES = {"tqdm": "an optional progress bar that no extra pulls in"}
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


def test_every_pip_install_hint_names_this_distribution_and_an_existing_extra():
    extras = _extras()
    hints = _hints()
    assert len(hints) >= 5, f"the scan found only {[where for where, _ in hints]}; did the files move?"
    wrong = []
    for where, match in hints:
        name, wanted = match["name"], match["extras"]
        if wanted is not None and "{" in wanted:
            # a template (errors.missing_package): its extras are checked at every call site below
            assert where.startswith("fabric_lite/errors.py"), f"{where}: templated hint outside errors.py"
            continue
        asked = {e.strip() for e in wanted.split(",")} if wanted else set()
        if name.lower().replace("_", "-") == OLD_NAME:
            wrong.append(f"{where}: {match[0]!r} installs the unrelated PyPI project {OLD_NAME!r}")
        elif name in (DIST_NAME, "."):
            if name == "." and not match["editable"]:
                wrong.append(f"{where}: {match[0]!r} from a checkout should be editable: pip install -e '.[extra]'")
            if asked - extras:
                wrong.append(f"{where}: {match[0]!r} names extras {sorted(asked - extras)} not in {sorted(extras)}")
            if asked and not match["quote"]:
                wrong.append(f"{where}: {match[0]!r} needs quotes (zsh expands the brackets)")
        elif name not in PLAIN_PACKAGES:
            wrong.append(f"{where}: {match[0]!r} names {name!r}: use an extra of {DIST_NAME} or list it in PLAIN_PACKAGES")
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


def test_the_hint_scan_catches_the_old_name_and_unknown_extras():
    # the scanner itself: a wrong hint must not slip through as "not a hint"
    for text, name, extras in [
        ("Fix: pip install 'fabric-lite[tuner]'", "fabric-lite", "tuner"),
        ("pip install fabric-lite[deepspeed]", "fabric-lite", "deepspeed"),
        ("pip install -e '.[nope]'", ".", "nope"),
        ("pip install torch-fabric-lite", "torch-fabric-lite", None),
    ]:
        match = HINT.search(text)
        assert match and match["name"] == name and match["extras"] == extras, text
