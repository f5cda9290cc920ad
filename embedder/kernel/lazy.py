"""Package names imported on first use: ``import embedder`` (or ``classifiers``) stays instant, and torch or
scikit-learn are imported only by the module that needs them, when a name of it is first asked for."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` for ``package``: each name of ``exports`` (name → submodule) imported on first use."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_dir(namespace: dict, exports: dict[str, str]):
    """A module ``__dir__`` that lists the lazy names of ``exports`` beside those already in ``namespace`` (the
    package's ``globals()``), so that ``dir(package)`` and completion in a shell show them before their first use."""

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __dir__
