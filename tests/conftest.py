"""Fixtures only (the helpers they use live in tests/helpers): generated image folders, one engine folder and one
pre-extracted cache per session, and the ``slow`` → ``integration`` alias."""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import pytest
from helpers import FAST, write_tree


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    """``slow`` is the old name of ``integration``: a test marked slow is in the integration tier too."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def own_cache_dir(tmp_path, monkeypatch):
    """Default caches under the test's own tmp_path (the fine-tuning modules use it for every test)."""
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def images(tmp_path):
    """Twelve class-per-folder images (three classes of four)."""
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    return root


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    paths = write_tree(root)
    return root, paths


@pytest.fixture(autouse=True, scope="session")
def shared_engine_dir(tmp_path_factory):
    """One engine folder for the session: each settings value is exported to ONNX once, not once per test."""
    from embedder.kernel.store import ENGINE_DIR_ENV

    folder = str(tmp_path_factory.mktemp("engines"))
    previous = os.environ.get(ENGINE_DIR_ENV)
    os.environ[ENGINE_DIR_ENV] = folder
    yield folder
    if previous is None:
        os.environ.pop(ENGINE_DIR_ENV, None)
    else:
        os.environ[ENGINE_DIR_ENV] = previous


class Extracted(NamedTuple):
    images: pathlib.Path  # class-per-folder: cats, dogs, owls, 4 images each (JPEG and PNG)
    cache: pathlib.Path  # those images embedded with the FAST settings (resnet18, random weights, 64 px)
    paths: list[str]  # the images' paths relative to ``images``, sorted


@pytest.fixture(scope="session")
def extracted(tmp_path_factory) -> Extracted:
    """One folder of generated images embedded once per session, for the tests that need some real cache. Read it,
    never write into it or its images: copy them to ``tmp_path`` first."""
    from embedder import extract

    root = tmp_path_factory.mktemp("extracted")
    paths = write_tree(root / "images", per_class=4)
    extract(str(root / "images"), str(root / "train.h5"), **FAST)
    return Extracted(root / "images", root / "train.h5", paths)
