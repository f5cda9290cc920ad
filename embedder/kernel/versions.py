"""The versions of the libraries results depend on, worked out in one place with one marker for a missing one.

Reading a version must not import the library (torch takes seconds): a package's own ``version.py`` is read
when it has one (the same string as ``__version__``, with the build tag: 2.15.0+cu132), else its metadata.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from importlib import metadata

from embedder import __version__

MISSING = "-"  # the version of a package that is not installed
LIBRARIES = (
    "torch",
    "torchvision",
    "timm",
    "onnxruntime",
    "numpy",
    "h5py",
    "pillow",
    "scikit-learn",
)  # what features depend on


def version_of(package: str) -> str:
    """The installed version of ``package`` (a distribution name: ``scikit-learn``, ``pillow``), or ``MISSING``."""
    found = own_version(package)
    if found:
        return found
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return MISSING


def library_versions(packages=LIBRARIES) -> dict[str, str]:
    """featurebank's version, then each of ``packages``, then Python's."""
    return {"featurebank": __version__, **{p: version_of(p) for p in packages}, "python": sys.version.split()[0]}


def own_version(package: str) -> str | None:
    """``package.version.__version__`` read from its file: the same string as after ``import`` (with the build
    tag, 2.15.0+cu132), in microseconds, where package metadata takes milliseconds and the import seconds."""
    if package in sys.modules:
        return getattr(sys.modules[package], "__version__", None)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        with open(os.path.join(list(spec.submodule_search_locations)[0], "version.py")) as fh:
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", fh.read(), re.M)
    except OSError:
        return None
    return found.group(1) if found else None
