"""docs/contributing.md's code map and benchmark list are what docs/codemap.py writes from the code now: a module
added, moved or removed (or a first sentence rewritten) fails here until the map is written again."""

from __future__ import annotations

import pathlib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "codemap.py"


def _codemap() -> types.ModuleType:
    """docs/codemap.py, executed without writing bytecode beside it (docs/ is the site's source)."""
    module = types.ModuleType("codemap")
    module.__file__ = str(SCRIPT)
    exec(compile(SCRIPT.read_text(encoding="utf-8"), str(SCRIPT), "exec"), module.__dict__)
    return module


def test_the_code_map_in_the_contributors_guide_is_the_one_the_code_gives_now():
    codemap = _codemap()
    page = codemap.PAGE.read_text(encoding="utf-8")
    assert codemap.render(page) == page, "docs/contributing.md's code map is stale: run python3 docs/codemap.py"


def test_every_module_and_benchmark_has_its_row():
    page = (ROOT / "docs" / "contributing.md").read_text(encoding="utf-8")
    for top in ("embedder", "classifiers", "workflows"):
        for module in (ROOT / top).rglob("*.py"):
            package = module.parent.relative_to(ROOT).as_posix()
            assert f"### `{package}/`" in page
            if module.name != "__init__.py":
                assert f"| `{module.name}` |" in page, module
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert f"| `{script.name}` |" in page, script
    assert "### `cli.py`" in page


def _tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, doc in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""{doc}"""\n' if doc is not None else "x = 1\n")
    return root


BASE = {
    "embedder/__init__.py": "Pixels to vectors.",
    "embedder/parts.py": "The HDF5 cache: parts, then a merge. Second sentence, not shown.",
    "embedder/inputs/__init__.py": "What the user points at.",
    "embedder/inputs/folders.py": "Folders and manifests, e.g. CSV files.\n\nA second paragraph.",
    "classifiers/__init__.py": "Vectors to models.",
    "classifiers/names.py": "Names | pipelines, ``logreg`` first.",
    "workflows/__init__.py": "Fine-tuning and deployment.",
    "cli.py": "The command line.",
    "benchmarks/speed.py": "Images per second, one run.\n\n    python benchmarks/speed.py",
}
PAGE = "# Contributing\n\n<!-- codemap: begin -->\nold\n<!-- codemap: end -->\n\nhand\n\n<!-- benchmarks: begin -->\n<!-- benchmarks: end -->\n"


def test_the_map_groups_rows_by_package_bottom_layer_first_with_each_first_sentence(tmp_path):
    codemap = _codemap()
    root = _tree(tmp_path, BASE)
    text = codemap.render(PAGE, root)
    assert text.index("### `embedder/`") < text.index("### `embedder/inputs/`") < text.index("### `classifiers/`")
    assert text.index("### `classifiers/`") < text.index("### `workflows/`") < text.index("### `cli.py`")
    assert "| `parts.py` | The HDF5 cache: parts, then a merge. |" in text
    assert "| `folders.py` | Folders and manifests, e.g. CSV files. |" in text  # an abbreviation ends no sentence
    assert "| `names.py` | Names \\| pipelines, `logreg` first. |" in text  # a table cell stays one cell
    assert "| `speed.py` | Images per second, one run. |" in text
    assert "Second sentence" not in text and "\nold\n" not in text and "\nhand\n" in text
    assert codemap.render(text, root) == text  # written again: the same


def test_a_moved_module_makes_the_page_stale_and_one_without_a_docstring_is_refused(tmp_path):
    codemap = _codemap()
    root = _tree(tmp_path, BASE)
    page = codemap.render(PAGE, root)
    (root / "embedder" / "parts.py").rename(root / "embedder" / "inputs" / "parts.py")
    assert codemap.render(page, root) != page
    _tree(root, {"embedder/inputs/plain.py": None})
    with pytest.raises(codemap.CodemapError, match=r"embedder/inputs/plain.py has no docstring"):
        codemap.render(page, root)


def test_a_package_outside_the_layers_is_refused(tmp_path):
    codemap = _codemap()
    root = _tree(tmp_path, {**BASE, "extras/__init__.py": "A new package."})
    with pytest.raises(codemap.CodemapError, match="extras not in docs/codemap.py's LAYERS"):
        codemap.render(PAGE, root)
