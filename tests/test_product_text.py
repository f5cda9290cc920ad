"""The README and the docs speak to featurebank's users: no words of the place it was built in (machines lent to it,
the tools that lend them, a folder of shared data beside the checkout)."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent

# each a phrase that only the workspace the project was built in would say; "session" and "helper" are left out on
# purpose: onnxruntime's InferenceSession and a tests/helpers module are the product's own words
WORKSPACE_WORDS = (
    r"\blent\b",
    r"\blend(s|ing)?\b",
    r"device tool",
    r"device time",
    r"\.\./shared\b",
    r"\bshared/",
    r"\bworkspace\b",
    r"can_start_another",
    r"files_at",
    r"give_back",
)


def workspace_words(text: str) -> list[str]:
    """Each line of ``text`` that holds one of the workspace's words, with its line number."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        hits = [p for p in WORKSPACE_WORDS if re.search(p, line, re.IGNORECASE)]
        if hits:
            found.append(f"{number}: {line.strip()[:100]}  ({', '.join(hits)})")
    return found


def test_the_phrases_catch_the_words_they_are_for_and_not_the_products_own():
    assert workspace_words("No GPU has been lent to this project yet.")
    assert workspace_words("featurebank extract ../shared/data/hymenoptera/train")
    assert workspace_words("Inside this project's workspace, the device tool's status says...")
    assert workspace_words("--cache /shared/cache/photos.h5")
    assert not workspace_words("session = ort.InferenceSession(path); silent, excellent; shared folds; tests/helpers")


def test_readme_and_docs_hold_no_word_of_the_workspace():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    found = {p.relative_to(ROOT).as_posix(): workspace_words(p.read_text(encoding="utf-8")) for p in pages}
    assert {page: lines for page, lines in found.items() if lines} == {}


def test_the_gpu_scripts_help_is_a_runbook_for_a_user_with_a_gpu():
    script = (ROOT / "benchmarks" / "gpu.py").read_text(encoding="utf-8")
    assert workspace_words(script) == []  # its --help is its docstring and its options' help
    doc = ast.get_docstring(ast.parse(script))
    assert "description=__doc__," in script
    for what in ("python benchmarks/gpu.py --prepare", "python benchmarks/gpu.py --out", "minutes", "--budget"):
        assert what in doc, what  # how to run it, and for how long
    for where in ("gpu_results.json", "benchmarks/RESULTS.md", "--record"):
        assert where in doc, where  # where its results go, and how reruns are merged
    assert "What it measures" in doc
