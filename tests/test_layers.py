"""The layer rule (docs/contributing.md): imports point one way, cli → workflows → classifiers → embedder, with no
cycle inside a package and no private name taken from another module. The contracts are in ``.importlinter``."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

pytest.importorskip("importlinter", reason="import-linter checks the layers: pip install -e '.[test]'")

PACKAGES = ("embedder", "classifiers", "workflows")
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(root) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree at ``root`` (its own packages first on the path), without a cache folder."""
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )


@pytest.mark.integration
def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 8 kept, 0 broken." in done.stdout


@pytest.fixture
def tree(tmp_path):
    """A copy of the packages and the contracts, to break on purpose."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


@pytest.mark.integration
@pytest.mark.parametrize(
    "module,line,broken",
    [
        ("embedder/kernel/settings.py", "from classifiers import zoo", "embedder is not allowed to import classifiers"),
        ("classifiers/data.py", "from workflows import deploy", "classifiers is not allowed to import workflows"),
        ("embedder/kernel/errors.py", "import cli", "cli.py is the top: no package imports it BROKEN"),
        ("workflows/deploy/run.py", "from workflows.finetune import loop", "do not import each other BROKEN"),
        ("classifiers/labels.py", "from . import bundle", "No cycles are allowed in classifiers"),
        ("embedder/inputs/decode.py", "from embedder.cache import hdf5", "backbones, kernel BROKEN"),
        ("embedder/kernel/store.py", "from embedder import job", "backbones, kernel BROKEN"),
        ("classifiers/zoo.py", "from classifiers.report import text", "imports their report BROKEN"),
        ("workflows/deploy/head.py", "from workflows.deploy import run", "run, graph, head BROKEN"),
        ("workflows/deploy/options.py", "import click", "only cli.py imports it BROKEN"),
    ],
)
def test_an_upward_or_circular_import_breaks_a_contract(tree, module, line, broken):
    """Each contract bites: the same check fails once one such import is added, even inside a function."""
    path = tree / module
    path.write_text(path.read_text() + f"\n\ndef _added():\n    {line}\n")
    done = lint_imports(tree)
    assert done.returncode == 1 and broken in done.stdout, done.stdout + done.stderr


def private_imports(root) -> list[str]:
    """``from module import _name`` of one module of ours by another (a package's own ``__init__`` aside)."""
    found = []
    files = [root / "cli.py"] + [p for name in PACKAGES for p in (root / name).rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                found += [
                    f"{path.relative_to(root)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_no_private_name_crosses_modules(tmp_path):
    assert private_imports(ROOT) == []
    (tmp_path / "embedder").mkdir()
    (tmp_path / "cli.py").write_text("from embedder.job import _hidden\n")
    assert private_imports(tmp_path) == ["cli.py: embedder.job._hidden"]
