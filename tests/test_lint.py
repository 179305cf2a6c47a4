"""The shape of the code is held by tools: the layers contract (import-linter, .importlinter) and
ruff. `make lint` runs them on the tree; these tests show that each names what breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name):
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install 'dscoder[dev]')")
    return str(path)


def test_an_import_that_breaks_a_layer_is_named_with_its_rule(tmp_path):
    lint = tool("lint-imports")
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "dscoder", copy / "dscoder", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    env = {"PYTHONPATH": str(copy), "PATH": str(BIN), "HOME": str(tmp_path)}
    kept = subprocess.run([lint, "--no-cache"], cwd=copy, env=env, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout[-2000:]
    target = copy / "dscoder" / "repo" / "collect.py"  # repository analysis reaching up into the corpus build
    target.write_text(target.read_text() + "\n\ndef _up():\n    from dscoder.data import corpus  # noqa: F401\n")
    broken = subprocess.run([lint, "--no-cache"], cwd=copy, env=env, capture_output=True, text=True)
    assert broken.returncode != 0
    assert "dscoder.repo is not allowed to import dscoder.data" in broken.stdout
    assert "dscoder.repo.collect -> dscoder.data.corpus" in broken.stdout


def test_a_file_the_formatter_would_change_is_named(tmp_path):
    ruff = tool("ruff")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "bad.py"
    bad.write_text("x = {  'a':1 }\n")
    found = subprocess.run([ruff, "format", "--check", str(bad)], cwd=tmp_path, capture_output=True, text=True)
    assert found.returncode == 1 and "bad.py" in found.stdout
    subprocess.run([ruff, "format", str(bad)], cwd=tmp_path, check=True, capture_output=True)
    assert bad.read_text() == 'x = {"a": 1}\n'


def test_a_private_name_used_from_another_module_is_named(tmp_path):
    """`module._name` (SLF001) and `from module import _name` (PLC2701) are refused outside tests."""
    ruff = tool("ruff")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    package = tmp_path / "dscoder"
    package.mkdir()
    (package / "a.py").write_text("def _helper():\n    return 1\n\n\ndef public():\n    return _helper()\n")
    (package / "b.py").write_text("from dscoder import a\n\n\ndef use():\n    return a.public()\n")
    (package / "c.py").write_text("from dscoder.a import public\n\n\ndef use():\n    return public()\n")
    clean = subprocess.run([ruff, "check", "dscoder"], cwd=tmp_path, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout
    (package / "b.py").write_text("from dscoder import a\n\n\ndef use():\n    return a._helper()\n")
    (package / "c.py").write_text("from dscoder.a import _helper\n\n\ndef use():\n    return _helper()\n")
    found = subprocess.run(
        [ruff, "check", "--output-format", "concise", "dscoder"], cwd=tmp_path, capture_output=True, text=True
    )
    assert found.returncode == 1
    assert "b.py:5:12: private-member-access: Private member accessed: `_helper`" in found.stdout, found.stdout
    assert "c.py:1:23: import-private-name: Private name import `_helper`" in found.stdout, found.stdout
