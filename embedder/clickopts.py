"""The command line's plumbing, apart from its commands: one-line errors and what an interrupted command kept
(``Group``), JSON or text output (``emit``), and click options made from the library's value objects
(``embedder.options.option`` fields), so that every option's default, help and reading is written once, in the value
it fills (``value_options``, ``checked``). Used by ``cli.py``; it imports nothing of featurebank's heavy parts."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import fields, is_dataclass

import click

from embedder.kernel.errors import FeaturebankError, Terminated, terminate_as_interrupt


def checked(function: str):
    """A click callback: the value as the library's ``module:function`` reads it (None stays None), its one-line
    error a usage error. The module is imported when the option is given, so that --help waits for no torch."""

    def callback(ctx, param, value):
        module, name = function.split(":")
        try:
            return None if value is None else getattr(importlib.import_module(module), name)(value)
        except FeaturebankError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit: a larger one was a traceback deep inside
INT_MAX = 2**62  # no count or size is larger; a 400-digit number is refused by its type, not by an OverflowError


class Jobs(click.ParamType):
    """``-j``: a number of parallel jobs, 1 or more, or -1 (every core), -2 (every core but one), ... as joblib reads
    it; 0 means nothing to joblib and is refused."""

    name = "integer"

    def convert(self, value, param, ctx):
        n = click.IntRange(-4096, 4096).convert(value, param, ctx)
        if n == 0:
            self.fail("0 jobs cannot run anything: give 1 or more, or -1 for every core", param, ctx)
        return n


class Bounded(click.IntRange):
    """An IntRange whose upper bound ``INT_MAX`` (a guard, not a choice) is not shown in --help."""

    def convert(self, value, param, ctx):
        n = click.INT.convert(value, param, ctx)
        if self.max == INT_MAX and n > INT_MAX:
            self.fail(f"{n} is too large (more than {INT_MAX:,})", param, ctx)
        return super().convert(n, param, ctx)

    def _describe_range(self) -> str:
        if self.max == INT_MAX:
            return click.IntRange(self.min, None, min_open=self.min_open)._describe_range()
        return super()._describe_range()


def int_type(m: dict, name: str) -> click.ParamType:
    """The click type of an int field: its range (``low``, ``high``), a seed's 32 bits, ``n_jobs``'s rule; every int
    is bounded, so that a value too large for the code that uses it is a usage error."""
    if name == "n_jobs":
        return Jobs()
    if name == "seed" and "low" not in m:
        return click.IntRange(0, SEED_MAX)
    return Bounded(
        m.get("low"), m.get("high", INT_MAX), min_open=m.get("low_open", False), max_open=m.get("high_open", False)
    )


def value_options(cls):
    """click options made from the fields of a value object (and of one inside it): the names, defaults, help and
    checks are the object's, written once there (``embedder.options.option``). A required option has no default
    (click would count a default of None as given)."""

    def leaves(c):
        return [
            g
            for f in fields(c)
            for g in (leaves(f.default_factory) if is_dataclass(f.default_factory) else [f])
            if g.metadata.get("cli", True)
        ]

    def reading(f) -> dict:
        m, default = f.metadata, f.default
        if isinstance(default, bool) or "/" in m.get("flag", ""):  # --x, --no-x (default True), or --x/--no-x
            return {
                "default": default,
                "help": m["help"],
                **({} if default is None else {"is_flag": True, "flag_value": not default}),
            }
        kw = {
            **({} if m.get("required") else {"default": default}),
            "help": m["help"],
            "show_default": default is not None,
            "multiple": bool(m.get("multiple")),
            "required": m.get("required", False),
            "metavar": m.get("metavar") or (f.name.upper() if "check" in m else None),
        }
        if "choices" in m:
            kw["type"] = click.Choice(m["choices"])
        elif "path" in m:
            kw["type"] = click.Path(**m["path"])
        elif "check" in m:
            kw.update(type=click.STRING, callback=checked(m["check"]))
        elif "float" in f.type and "low" in m:
            kw["type"] = click.FloatRange(
                m["low"], m.get("high"), min_open=m.get("low_open", False), max_open=m.get("high_open", False)
            )
        elif f.type in ("int", "int | None"):
            kw["type"] = int_type(m, f.name)
        return kw

    def apply(command):
        for f in reversed(leaves(cls)):
            names = [
                *([f.metadata["short"]] if "short" in f.metadata else []),
                f.metadata.get("flag") or "--" + f.name.replace("_", "-"),
                f.name,
            ]
            command = click.option(*names, **reading(f))(command)
        return command

    return apply


EMBEDDED_KEPT = "the images embedded so far are kept in the cache, and the same command continues from them"
KEPT = {  # what an interrupted command kept, by command
    "extract": "every finished batch is kept; run the same command again to continue",
    "finetune": "the last finished epoch is saved (OUT/last.pt); run the same command with --resume to continue",
    "cv": "no report was written and the caches are unchanged; run the same command again to start over",
    "train": "no model file was written (an existing -o file is unchanged); run the same command again",
    "predict": f"no predictions were written; {EMBEDDED_KEPT}",
    "evaluate": f"nothing was scored; {EMBEDDED_KEPT}",
    "export": "no ONNX file was written (an existing -o file is unchanged)",
    "convert": "NEW was not written",
}


class Group(click.Group):
    """Turns FeaturebankError, Ctrl-C and SIGTERM into one line and an exit code instead of a traceback."""

    def invoke(self, ctx):
        try:
            with terminate_as_interrupt():
                return super().invoke(ctx)
        except FeaturebankError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            how = "Terminated (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
            kept = getattr(exc, "kept", None) or KEPT.get(ctx.invoked_subcommand, "stopped before it finished")
            click.echo(f"{how}: {kept}.", err=True)  # kept: what the library knows was kept, when it said
            sys.exit(143 if isinstance(exc, Terminated) else 130)


def emit(data, as_json: bool, text) -> None:
    """``data`` as JSON, or the lines ``text(data)`` returns."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else "\n".join(text(data)))
