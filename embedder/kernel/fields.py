"""Option fields: a dataclass field that says, once, its default, its help and how a command-line value is read.

A field's ``metadata`` (made by ``option``) holds ``help`` and any of: ``choices``; ``low``/``high`` with
``low_open``/``high_open`` (a range); ``path`` (keywords of a path check); ``check`` (a function ``module:name``
that reads the value or says in one line why not; imported when the option is given, so that ``--help`` waits for
no torch); ``flag`` (the option that turns a default-True field off); ``short``; ``multiple``; ``cli=False`` (not
an option). Every layer's options values are made of these fields; the command line reads them (``cli.value_options``).
"""

from __future__ import annotations

import importlib
from dataclasses import field, fields


def option(default, help: str | None = None, **read):
    """A field with its command-line help and reading (see the module's docstring)."""
    return field(default=default, metadata={"help": help, **read})


def same_as(cls, name: str, help: str | None = None, **read):
    """A field that is ``cls``'s field ``name`` again (its default, help and reading, written once there), with
    ``help`` or readings changed where given: ``batch_size: int = same_as(ExtractOptions, "batch_size")``."""
    (f,) = [f for f in fields(cls) if f.name == name]
    return option(
        f.default, help or f.metadata["help"], **{**{k: v for k, v in f.metadata.items() if k != "help"}, **read}
    )


def read_by(check: str, value):
    """``value`` as a field's ``check`` (``module:function``) reads it, the module imported only now (the command
    line's callbacks and the Python API's options alike)."""
    module, name = check.split(":")
    return getattr(importlib.import_module(module), name)(value)
