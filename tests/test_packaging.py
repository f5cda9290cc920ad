"""What `pip install .` ships: every package of the source tree (an editable install would hide a missing one)."""

from __future__ import annotations

import pathlib

from helpers import ROOT


def test_every_package_of_the_tree_is_installed():
    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(str(ROOT / "setup.cfg"))["options"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("embedder", "classifiers", "workflows")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert {"embedder", "classifiers", "workflows", "workflows.finetune"} <= on_disk
    assert set(options["packages"]) == on_disk
    assert options["py_modules"] == ["cli"]
    templates = pathlib.Path(ROOT / "classifiers" / "templates")
    assert any(templates.glob("*.j2")) and options["package_data"]["classifiers"] == ["templates/*.j2", "py.typed"]


def test_each_package_ships_its_py_typed_marker():
    """PEP 561: a type checker reads the hints of an installed package only where the package carries ``py.typed``."""
    from setuptools.config.setupcfg import read_configuration

    package_data = read_configuration(str(ROOT / "setup.cfg"))["options"]["package_data"]
    for top in ("embedder", "classifiers", "workflows"):
        assert "py.typed" in package_data[top], top
        assert (ROOT / top / "py.typed").is_file(), top
