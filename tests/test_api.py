"""The Python API as a caller meets it: the lazy packages' names (``dir``, ``__all__``, the types a type checker
sees), the error classes (each a standard exception too), and the zoo's registry refusing a name already taken."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

import classifiers
import embedder
from classifiers.registry import ClassifierSpec, get_spec, register_classifier, unregister_classifier
from embedder.kernel.errors import FeaturebankError, FileProblem, IncompatibleSettings, InvalidValue, MissingFile

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAZY = ("embedder", "classifiers", "workflows.finetune")


def _exports_and_typing_imports(package: str) -> tuple[dict[str, str], dict[str, str]]:
    """The package's lazy table (name → submodule) and the names its ``if TYPE_CHECKING:`` block imports."""
    tree = ast.parse((ROOT / package.replace(".", "/") / "__init__.py").read_text())
    exports: dict[str, str] = {}
    typed: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_EXPORTS":
            exports = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level in (0, 1), ast.dump(imp)
                module = str(imp.module)  # relative to the package, as the lazy table names it
                if imp.level == 0:
                    assert module.startswith(package + "."), ast.dump(imp)
                    module = module[len(package) + 1 :]
                typed.update({alias.name: module for alias in imp.names})
    return exports, typed


@pytest.mark.parametrize("package", LAZY)
def test_a_type_checker_sees_every_lazy_name_where_it_is_imported_from(package):
    exports, typed = _exports_and_typing_imports(package)
    assert len(exports) >= 10
    assert typed == exports


@pytest.mark.parametrize("package", LAZY)
def test_dir_and_all_list_the_lazy_names_before_their_first_use(package):
    module = importlib.import_module(package)
    exports, _ = _exports_and_typing_imports(package)
    assert module.__all__ == sorted(exports)
    assert set(exports) <= set(dir(module))
    assert "__version__" in dir(embedder) and "extract" in dir(embedder)
    assert "cross_validate" in dir(classifiers) and "register_classifier" in dir(classifiers)
    for name in exports:  # and each resolves to the object of the module the table names
        obj = getattr(module, name)
        assert getattr(importlib.import_module(f"{package}.{exports[name]}"), name) is obj
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        module.nothing_here  # noqa: B018


def test_importing_embedder_still_imports_neither_torch_nor_scikit_learn():
    code = "import sys, embedder; dir(embedder); print('torch' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_error_classes_are_exported_and_are_the_standard_exceptions_they_describe():
    assert embedder.InvalidValue is InvalidValue and embedder.MissingFile is MissingFile
    assert embedder.FileProblem is FileProblem and embedder.IncompatibleSettings is IncompatibleSettings
    for cls, standard in [
        (InvalidValue, ValueError),
        (IncompatibleSettings, ValueError),
        (MissingFile, FileNotFoundError),
        (FileProblem, OSError),
    ]:
        error = cls("the one line the user reads")
        assert isinstance(error, FeaturebankError) and isinstance(error, standard)
        assert str(error) == "the one line the user reads"  # OSError's constructor keeps one argument as is
    assert not issubclass(FileProblem, FileNotFoundError) and not issubclass(InvalidValue, OSError)


def test_a_bad_option_is_a_value_error():
    from classifiers.cost import parse_budget

    with pytest.raises(ValueError, match="--budget 'soon'") as caught:
        parse_budget("soon")
    assert type(caught.value) is InvalidValue
    with pytest.raises(ValueError, match="unknown classifier 'nope'"):
        classifiers.parse_spec("nope")


def test_a_missing_input_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cache not found") as caught:
        embedder.CacheReader(str(tmp_path / "absent.h5"))
    assert isinstance(caught.value, FeaturebankError)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        classifiers.load_bundle(str(tmp_path / "absent.fbmodel"))


def test_a_damaged_cache_is_an_os_error_and_one_of_other_settings_a_value_error(tmp_path):
    from helpers import SYNTHETIC_SETTINGS, synthetic_cache

    from embedder.cache.hdf5 import CacheWriter

    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an HDF5 file at all" * 10)
    with pytest.raises(OSError) as caught:
        embedder.CacheReader(str(junk))
    assert type(caught.value) is FileProblem and str(caught.value).startswith(f"cannot open {junk} as an HDF5 cache")

    path = tmp_path / "c.h5"
    synthetic_cache(path)
    other = {**SYNTHETIC_SETTINGS, "pooling": "max"}
    writer = CacheWriter(str(path), other, "classes:/synthetic", "/synthetic", {"weights_file": None})
    with pytest.raises(ValueError, match="was made with other settings") as caught:
        writer.__enter__()
    assert type(caught.value) is IncompatibleSettings  # its own line, not taken for a damaged cache
    assert len(embedder.CacheReader(str(path)).paths) == 30  # and the cache is as it was


def test_register_classifier_refuses_a_taken_name_unless_told_to_replace_it():
    from sklearn.neighbors import KNeighborsClassifier

    builtin = get_spec("logreg")
    mine = ClassifierSpec("logreg", "my own logreg", lambda seed: KNeighborsClassifier())
    with pytest.raises(InvalidValue, match=r"classifier 'logreg' is already registered \(") as caught:
        register_classifier(mine)
    assert builtin.summary in str(caught.value) and "replace=True" in str(caught.value)
    assert get_spec("logreg") is builtin  # untouched
    try:
        assert register_classifier(mine, replace=True) is mine
        assert get_spec("logreg") is mine
    finally:
        register_classifier(builtin, replace=True)
    assert get_spec("logreg") is builtin
    spare = ClassifierSpec("spare-knn", "a test entry", lambda seed: KNeighborsClassifier())
    try:
        register_classifier(spare)
        with pytest.raises(ValueError, match="'spare-knn' is already registered"):
            register_classifier(spare)
    finally:
        unregister_classifier("spare-knn")
    register_classifier(spare)  # free again once unregistered
    unregister_classifier("spare-knn")
