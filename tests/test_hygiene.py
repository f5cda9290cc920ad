"""The house rules a reviewer would check by hand, checked on every run: lint, format, docs, types, version, licence."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT


def _run(*cmd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (it comes with the test extra: pip install -e '.[test]')")
    return path


@pytest.mark.integration
def test_ruff_lint_is_clean():
    result = _run(_need("ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_ruff_format_is_clean():
    result = _run(_need("ruff"), "format", "--check", ".")
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr


@pytest.mark.integration
def test_docs_site_builds_strictly(tmp_path):
    """Every page in the nav, every link and anchor resolvable: a warning fails the build."""
    result = _run(_need("mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []


def test_the_version_is_written_once():
    import embedder

    assert re.search(r"(?m)^version = attr: embedder\.__version__$", (ROOT / "setup.cfg").read_text())
    assignments = [
        p
        for p in ROOT.glob("**/*.py")
        if ".git" not in p.parts and re.search(r"(?m)^__version__ = ", p.read_text(errors="replace"))
    ]
    assert [p.relative_to(ROOT).as_posix() for p in assignments] == ["embedder/__init__.py"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", embedder.__version__)
    assert f"## {embedder.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_the_licence_file_matches_the_metadata():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert re.search(r"(?m)^license = MIT$", (ROOT / "setup.cfg").read_text())


def _mypy_errors(lines: list[str]) -> collections.Counter:
    """``file: error: message [code]`` without line numbers, so that moving code does not count as a new error."""
    out = collections.Counter()
    for line in lines:
        m = re.match(r"^([^:]+):\d+(?::\d+)?: error: (.*)$", line.strip())
        if m:
            out[f"{m.group(1)}: {m.group(2)}"] += 1
    return out


@pytest.mark.integration
def test_mypy_finds_nothing_beyond_its_baseline():
    """The baseline may only shrink: fix an error and delete its line from mypy-baseline.txt."""
    pytest.importorskip("mypy", reason="mypy comes with the test extra: pip install -e '.[test]'")
    result = _run(sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    found = _mypy_errors(result.stdout.splitlines())
    baseline = _mypy_errors((ROOT / "mypy-baseline.txt").read_text().splitlines())
    new = found - baseline
    assert not new, "new mypy errors (fix them; the baseline only shrinks):\n" + "\n".join(sorted(new))
