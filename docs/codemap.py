"""Writes the code map and the benchmark list of docs/contributing.md from the code's own docstrings.

    python3 docs/codemap.py           # rewrites the two generated parts of docs/contributing.md
    python3 docs/codemap.py --check   # exit 1 (and say so) when they differ from what the code says now

Each package is a heading with its ``__init__`` docstring's first sentence, then one row per module: its file name and
the first sentence of its docstring; packages go by layer, bottom first (``LAYERS``), each followed by its
sub-packages. Each script in benchmarks/ is a row with the first sentence of its docstring. The parts sit between
marker comments (``<!-- codemap: begin -->`` … ``<!-- codemap: end -->``, the same with ``benchmarks``); the rest of
the page is written by hand. tests/test_codemap.py fails when the page differs from what this prints, so a module
that is added, moved, removed or re-described shows up there until the map is written again. Standard library only.
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "contributing.md"
LAYERS = ("embedder", "classifiers", "workflows", "cli.py")  # bottom first, as the layer rule stacks them
NOT_CODE = {"tests", "benchmarks", "docs", "examples", "cache", "runs", "site", "build", "dist"}
REGENERATE = "python3 docs/codemap.py"
_ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "etc.", "cf.")


class CodemapError(Exception):
    """Something the map cannot be written from: a module without a docstring, a package outside LAYERS."""


def first_sentence(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    """The first sentence of a file's module docstring, on one line, as Markdown that fits a table cell."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc or not doc.strip():
        raise CodemapError(
            f"{path.relative_to(root).as_posix()} has no docstring: write one, its first sentence is its map line"
        )
    text = " ".join(re.split(r"\n\s*\n", doc.strip())[0].split())  # the first paragraph, on one line
    end = len(text)
    for m in re.finditer(r"[.!?](?=\s)", text):
        if not text[: m.end()].endswith(_ABBREVIATIONS):
            end = m.end()
            break
    sentence = text[:end].replace("``", "`")
    return sentence.replace("|", "\\|")


def _packages(top: pathlib.Path) -> list[pathlib.Path]:
    """``top`` and its sub-packages (folders with an ``__init__.py``), each followed by its own, by name."""
    found = [top]
    for sub in sorted(p for p in top.iterdir() if (p / "__init__.py").is_file()):
        found += _packages(sub)
    return found


def _check_layers(root: pathlib.Path) -> None:
    tops = {p.name for p in root.iterdir() if (p / "__init__.py").is_file() and p.name not in NOT_CODE}
    unknown = sorted(tops - set(LAYERS))
    if unknown:
        raise CodemapError(f"package(s) {', '.join(unknown)} not in docs/codemap.py's LAYERS: add them in layer order")


def code_map(root: pathlib.Path = ROOT) -> str:
    """The generated part of the code map: a heading per package, a row per module."""
    _check_layers(root)
    out: list[str] = []
    for layer in LAYERS:
        if layer.endswith(".py"):
            out += [f"### `{layer}`", "", first_sentence(root / layer, root), ""]
            continue
        for package in _packages(root / layer):
            name = package.relative_to(root).as_posix()
            out += [f"### `{name}/`", "", first_sentence(package / "__init__.py", root), ""]
            out += ["| module | what it does |", "|---|---|"]
            for module in sorted(p for p in package.glob("*.py") if p.name != "__init__.py"):
                out.append(f"| `{module.name}` | {first_sentence(module, root)} |")
            out.append("")
    return "\n".join(out).rstrip("\n")


def benchmark_list(root: pathlib.Path = ROOT) -> str:
    """The generated list of benchmark scripts: a row per script with what it measures."""
    out = ["| script | measures |", "|---|---|"]
    for script in sorted((root / "benchmarks").glob("*.py")):
        out.append(f"| `{script.name}` | {first_sentence(script, root)} |")
    return "\n".join(out)


def _replace(page: str, marker: str, body: str) -> str:
    begin = f"<!-- {marker}: begin (written by {REGENERATE} from the docstrings; do not edit by hand) -->"
    pattern = re.compile(rf"<!-- {marker}: begin[^>]*-->\n.*?<!-- {marker}: end -->", re.S)
    if not pattern.search(page):
        raise CodemapError(
            f"docs/contributing.md lacks the markers <!-- {marker}: begin --> ... <!-- {marker}: end -->"
        )
    return pattern.sub(lambda _: f"{begin}\n\n{body}\n\n<!-- {marker}: end -->", page, count=1)


def render(page: str, root: pathlib.Path = ROOT) -> str:
    """``page`` (the text of docs/contributing.md) with both generated parts written from the code at ``root``."""
    return _replace(_replace(page, "codemap", code_map(root)), "benchmarks", benchmark_list(root))


def main(argv: list[str]) -> int:
    try:
        old = PAGE.read_text(encoding="utf-8")
        new = render(old)
    except CodemapError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if "--check" in argv:
        if new != old:
            print(f"docs/contributing.md's code map is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if new != old:
        PAGE.write_text(new, encoding="utf-8")
        print("docs/contributing.md: code map written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
