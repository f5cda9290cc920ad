"""featurebank's command line: parse, call one function of the Python API, print.

Every command has --help with an example; errors are one line (``Error: ...``) and a non-zero exit.

The plumbing comes first: one-line errors and what an interrupted command kept (``Group``, ``KEPT``), JSON or text
output (``emit``), and click options made from the fields of the library's options values (``value_options``), so
that every option's default, help and reading is written once, in the field it fills (``embedder.options.option``).
This is the only module that imports click; it imports nothing of featurebank's heavy parts before a command runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from dataclasses import fields, is_dataclass

import click

from classifiers.options import LABELS_ONCE, SUSPICIOUS, TOP, CVOptions, TrainOptions
from classifiers.select_options import SelectOptions
from embedder.kernel.errors import FeaturebankError, Note, Terminated, os_error_line, terminate_as_interrupt
from embedder.kernel.fields import read_by
from embedder.kernel.settings import POOLINGS
from embedder.options import BACKBONE, ExtractOptions, RunOptions, with_overrides
from workflows.deploy.options import ExportOptions
from workflows.finetune.options import RUN_FOLDER, FinetuneOptions


def checked(function: str):
    """A click callback: the value as the library's ``module:function`` reads it (None stays None), its one-line
    error a usage error. The module is imported when the option is given, so that --help waits for no torch."""

    def callback(ctx, param, value):
        try:
            return None if value is None else read_by(function, value)
        except FeaturebankError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit: a larger one was a traceback deep inside
INT_MAX = 2**62  # no count or size is larger; a 400-digit number is refused by its type, not by an OverflowError


class NonEmptyPath(click.Path):
    """``click.Path`` that refuses an empty value: ``-o ""`` (an unset shell variable) had reported "saved" and
    written nothing."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path: give a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


class Jobs(click.ParamType):
    """``-j``: a number of parallel jobs, 1 or more, or -1 (every core), -2 (every core but one), ... as joblib reads
    it; 0 means nothing to joblib and is refused."""

    name = "integer"

    def convert(self, value, param, ctx):
        n = click.IntRange(-4096, 4096).convert(value, param, ctx)
        if n == 0:
            self.fail("0 jobs cannot run anything: give 1 or more, or -1 for every core", param, ctx)
        return n


def given_once(hint: str):
    """The callback of an option read as repeatable so that a second one is refused (click keeps the last of a
    plain option's repeats, silently: two --labels CSVs, and the first one's labels were gone): its one value, or
    None."""

    def callback(ctx, param, values):
        if len(values) > 1:
            raise click.BadParameter(f"given {len(values)} times ({', '.join(map(str, values))}): {hint}", ctx, param)
        return values[0] if values else None

    return callback


class FiniteRange(click.FloatRange):
    """A FloatRange that refuses nan and inf, which its bounds let through (nan compares false with both)."""

    def convert(self, value, param, ctx):
        x = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value} is not a finite number", param, ctx)
        return super().convert(x, param, ctx)


class Bounded(click.IntRange):
    """An IntRange whose upper bound ``INT_MAX`` (a guard, not a choice) is not shown in --help."""

    def convert(self, value, param, ctx):
        n = click.INT.convert(value, param, ctx)
        if self.max == INT_MAX and n > INT_MAX:
            self.fail(f"{n} is too large (more than {INT_MAX:,})", param, ctx)
        return super().convert(n, param, ctx)

    def _describe_range(self) -> str:
        if self.max == INT_MAX and self.min is None:
            return ""  # no bound but the guard: nothing to say
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


def made(cls, options: dict):
    """The options value ``cls`` of a command's parsed options (by field name, a nested value's fields too)."""
    return with_overrides(cls, None, options)


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
            kw["type"] = NonEmptyPath(**m["path"])
        elif "check" in m:
            kw.update(type=click.STRING, callback=checked(m["check"]))
        elif "float" in f.type and "low" in m:
            kw["type"] = FiniteRange(
                m["low"], m.get("high"), min_open=m.get("low_open", False), max_open=m.get("high_open", False)
            )
        elif f.type in ("int", "int | None"):
            kw["type"] = int_type(m, f.name)
        if m.get("once"):  # taken repeatable, to refuse a repeat that click would settle by keeping the last
            kw.update(multiple=True, default=(), show_default=False, callback=given_once(m["once"]))
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
    "extract": "whatever was embedded before is kept; run the same command again to continue",
    "finetune": "the last finished epoch is saved (OUT/last.pt); run the same command with --resume to continue",
    "cv": "no report was written and the caches are unchanged; run the same command again to start over",
    "train": "no model file was written (an existing -o file is unchanged); run the same command again",
    "predict": f"no predictions were written; {EMBEDDED_KEPT}",
    "evaluate": f"nothing was scored; {EMBEDDED_KEPT}",
    "export": "no ONNX file was written (an existing -o file is unchanged)",
    "convert": "NEW was not written",
    "select": "no manifest was written (an existing -o file is unchanged)",
}


class Group(click.Group):
    """Turns FeaturebankError, Ctrl-C and SIGTERM into one line and an exit code instead of a traceback."""

    def invoke(self, ctx):
        try:
            with terminate_as_interrupt(), warnings.catch_warnings():
                warnings.showwarning = functools.partial(_note_line, warnings.showwarning)
                return super().invoke(ctx)
        except click.UsageError as exc:  # one line, as every error: what is wrong, and where the help is
            where = (  # click raises some without a context ("requires an argument"): the command then
                exc.ctx.command_path
                if exc.ctx is not None
                else " ".join(filter(None, [ctx.command_path, ctx.invoked_subcommand]))
            )
            raise click.UsageError(f"{exc.format_message()} (see {where} --help)") from None
        except FeaturebankError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a disk that filled, a file in the way: what no check could see before
            if isinstance(exc, BrokenPipeError) and _stdout_gone():  # | head: nothing to say, nowhere to say it
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
                sys.exit(1)
            if os.environ.get("FEATUREBANK_TRACEBACK"):
                raise
            raise click.ClickException(os_error_line(exc)) from None
        except KeyboardInterrupt as exc:
            how = "Terminated (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
            kept = getattr(exc, "kept", None) or KEPT.get(ctx.invoked_subcommand, "stopped before it finished")
            click.echo(f"{how}: {kept}.", err=True)  # kept: what the library knows was kept, when it said
            sys.exit(143 if isinstance(exc, Terminated) else 130)


def _note_line(shown_before, message, category, filename, lineno, file=None, line=None) -> None:
    """A ``Note`` as one line on stderr (``note: ...``); any other warning as it was shown before (``shown_before``,
    the ``warnings.showwarning`` the command found: Python's, or a caller's such as logging's)."""
    if issubclass(category, Note):
        click.echo(f"note: {message}", err=True)
        return
    shown_before(message, category, filename, lineno, file, line)


def _stdout_gone() -> bool:
    """Whether stdout's reader has left (a pipe closed): a broken pipe there is the reader's choice, not an error."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    return False


def emit(data, as_json: bool, text) -> None:
    """``data`` as JSON, or the lines ``text(data)`` returns."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else "\n".join(text(data)))


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="featurebank")
def main():
    """Image classification by transfer learning: embed images once with a frozen pretrained network
    (a CNN or a vision transformer), then train classical classifiers on the cached vectors.

    \b
    Start with:
      featurebank extract path/to/images --backbone resnet50 --weights DEFAULT
      featurebank info cache/<file>.h5
    """


@main.command(context_settings=CONTEXT)
@click.option(
    "--source",
    type=click.Choice(["torchvision", "timm"]),
    default="torchvision",
    show_default=True,
    help="torchvision's classification models, or timm's pretrained models (timm:NAME.TAG).",
)
@click.option("--filter", "pattern", help="A shell pattern on the names, e.g. '*dinov2*'.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list on stdout.")
def backbones(source, pattern, as_json):
    """List the backbones (every torchvision classification model, or timm's) with their feature sizes.

    \b
    Example:
      featurebank backbones --json
      featurebank backbones --source timm --filter '*dinov2*'
    """
    from embedder.backbones.table import backbone_rows, backbones_text

    emit(backbone_rows(source, pattern), as_json, backbones_text)


@main.command(context_settings=CONTEXT)
@click.argument("backbone", callback=checked(BACKBONE), metavar="BACKBONE")
@click.option("--size", type=click.IntRange(32), help="Input size (default: the backbone's crop size).")
@click.option(
    "--pooling",
    type=click.Choice(POOLINGS),
    default=ExtractOptions.pooling,
    show_default=True,
    help="Pooling, for the vector sizes shown.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list on stdout.")
def layers(backbone, size, pooling, as_json):
    """List the node names of BACKBONE that --layer accepts, with output shapes and vector sizes.

    The penultimate node (the default layer) is marked with *.

    \b
    Example:
      featurebank layers resnet50
      featurebank extract photos/ -b resnet50 --layer layer3,penultimate
    """
    from embedder.backbones.catalog import layer_rows, layers_text

    emit(layer_rows(backbone, size, pooling), as_json, layers_text)


@main.command(context_settings=CONTEXT)
@click.argument("source", metavar="INPUT...", nargs=-1, required=True, type=NonEmptyPath())
@click.option(
    "--cache",
    type=NonEmptyPath(dir_okay=False),
    help="HDF5 file to write (default: cache/<input>-<backbone>-<settings hash>.h5).",
)
@value_options(ExtractOptions)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def extract(source, cache, quiet, as_json, **options):
    """Embed every image of INPUT into an HDF5 cache, once.

    INPUT is a class-per-folder tree (labels from folder names), a flat folder (unlabeled), a CSV manifest
    (path,label[,group]), a .txt list of paths, or WebDataset .tar shards / .parquet files (a folder of them,
    files, a glob such as 'shards/{00000..00099}.tar'; rows named SHARD/KEY). Running it again embeds only new or changed images and
    continues an interrupted run. Files that cannot be read are skipped and reported. Under torchrun each
    rank embeds its share on its own device and rank 0 merges and prints.

    \b
    Example:
      featurebank extract ../shared/data/hymenoptera/train -b mobilenet_v2 \\
          -w ../shared/weights/mobilenet_v2-imagenet.pth --cache cache/ants.h5
      torchrun --nproc_per_node 4 -m cli extract photos/ --cache cache/photos.h5
      featurebank extract shards/ --label-key json:label --cache cache/web.h5
    """
    from embedder.cache.describe import extract_text
    from embedder.distributed import Rank
    from embedder.job import extract as run_extract

    summary = run_extract(
        source[0] if len(source) == 1 else list(source),
        cache,
        made(ExtractOptions, options),
        progress=not quiet and sys.stderr.isatty(),
    )
    if not Rank.from_env().leader:  # under torchrun, rank 0 speaks for the job
        return
    if not quiet or as_json:
        emit(summary.to_dict(), as_json, extract_text)
    if summary.rows == 0 and summary.failed:  # a cache of nothing is no result: a script must see it failed
        first = summary.failed[0]
        raise FeaturebankError(
            f"none of the {len(summary.failed)} image(s) could be read (e.g. {first['path']}: {first['reason']}); "
            f"the cache holds no row"
        )


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=NonEmptyPath())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description on stdout.")
@click.option(
    "--verify",
    is_flag=True,
    help="Read every feature row against its checksum (caches written with checksums); damage is one line and exit 1.",
)
def info(cache, as_json, verify):
    """Describe a cache: settings, rows per class, layers, skipped files, library versions.

    \b
    Example:
      featurebank info cache/ants.h5
    """
    from embedder.cache.describe import cache_text, describe_cache

    emit(describe_cache(cache, verify), as_json, cache_text)


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list on stdout.")
def classifiers(as_json):
    """List the classifier zoo: each a scikit-learn Pipeline with its preprocessing inside.

    A classifier is named by a spec, NAME[:key=value,...]. The keys l2 (on/off), scale (on/off) and pca (a
    number of dimensions, or off) switch the preprocessing steps; any other key is a parameter of the
    classifier (scikit-learn's name).

    \b
    Example:
      featurebank classifiers --json
      featurebank cv cache/flowers.h5 -c logreg -c "rbf-svm:pca=128,C=10" -c knn:n_neighbors=5
    """
    from classifiers.report.text import classifier_rows, classifiers_text

    emit(classifier_rows(), as_json, classifiers_text)


@main.command(context_settings=CONTEXT)
@click.argument("caches", metavar="CACHE...", nargs=-1, required=True, type=NonEmptyPath())
@value_options(CVOptions)
@click.option(
    "-o",
    "--out",
    type=NonEmptyPath(file_okay=False),
    help="Write report.json, report.md, report.html (with thumbs/), leaderboard.png, leaderboard.csv, "
    "confusion.png, map.png and predictions/*.csv here.",
)
@click.option(
    "--suspicious",
    type=click.IntRange(0),
    default=SUSPICIOUS,
    show_default=True,
    help="How many suspicious images the report lists.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON on stdout.")
def cv(caches, out, suspicious, quiet, as_json, **options):
    """Cross-validate classifiers × layers of CACHE on the same stratified folds.

    Prints a leaderboard (mean ± std over folds) and the images most confidently predicted as another
    class than their label. With --out, OUT/report.html shows it all with the images.

    Several caches of the same images (other backbones, weights or pooling) are ranked in one leaderboard on
    the same folds, made from the first cache's labels and groups; rows are matched by path, and caches that
    do not hold the same labelled images are refused. With several caches, -l names layers of any of them.

    "p vs #1" is a two-sided corrected resampled t-test (Nadeau & Bengio 2003) of each row against the best
    on balanced accuracy over the shared folds; ≈ marks rows not significantly worse (p ≥ 0.05).

    \b
    Example:
      featurebank cv cache/flowers.h5 --folds 5 --out runs/flowers-cv
      featurebank cv cache/flowers.h5 -c logreg,rbf-svm,knn --search -j 2
      featurebank cv cache/flowers-mnv2.h5 cache/flowers-sq11.h5 -c logreg,rbf-svm --repeats 2
      featurebank cv cache/flowers.h5 --search --scheduler tcp://head-node:8786
      featurebank cv cache/photos.h5 --labels labelled.csv --unlabeled -c logreg --folds 2
      featurebank cv cache/flowers.h5 -c logreg,knn --shots 1,2,5,10,all --draws 5
    """
    from classifiers.crossval import cross_validate
    from classifiers.report.text import cv_text
    from classifiers.report.writer import check_report_folder, report_dict, write_report
    from embedder.kernel.destination import writable_folder

    o = made(CVOptions, options)
    if o.scheduler and o.n_jobs not in (None, 1):
        raise click.UsageError("--n-jobs does not apply with --scheduler: every thread of the Dask cluster is used")
    if out:
        writable_folder(out, "the report", create=False)  # before the folds; made once the inputs are read
        check_report_folder(out)
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    progress, extras = not quiet and sys.stderr.isatty(), "out" if out else "report"
    report = cross_validate(list(caches), o, extras=extras, progress=progress, say=say)
    data = report_dict(report, suspicious)
    files = write_report(report, out, suspicious, data) if out else {}
    emit(data, as_json, lambda d: cv_text(d, files))


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=NonEmptyPath())
@value_options(TrainOptions)
@click.option(
    "--from",
    "from_run",
    type=NonEmptyPath(),
    help="A cv --out folder: train the best row of its leaderboard (its classifier and layer, searched when cv "
    "searched it) instead of -c and -l.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (the model file is written all the same).")
@click.option("--json", "as_json", is_flag=True, help="Print what was saved as JSON.")
@click.pass_context
def train(ctx, cache, from_run, quiet, as_json, **options):
    """Fit a classifier on every labelled row of CACHE and save it with its embedding settings.

    The model file holds JSON and a skops archive loaded with a fixed list of trusted types: loading one
    runs no code from it.

    --from RUN_DIR trains the best row of a cv --out folder by name: its classifier spec and layer (with
    --search when cv searched it); CACHE must be made with the embedding settings cv's cache was.

    \b
    Example:
      featurebank train cache/flowers.h5 -c rbf-svm -l classifier.0 -o models/flowers.fbmodel
      featurebank train cache/photos.h5 --labels labelled.csv --unlabeled -o models/photos.fbmodel
      featurebank train cache/flowers.h5 --from runs/flowers-cv -o models/flowers.fbmodel
    """
    from classifiers.bundle import train as run_train
    from classifiers.report.text import train_text

    o = made(TrainOptions, options)
    if from_run:
        from classifiers.from_run import train_best

        named = (
            ("-c", "classifier"),
            ("-l", "layer"),
            ("--unlabeled-mode", "unlabeled_mode"),
            ("--unlabeled-rule", "unlabeled_rule"),
        )
        given = [f for f, n in named if ctx.get_parameter_source(n).name == "COMMANDLINE"]
        if given:
            raise click.UsageError(
                f"--from takes the classifier, the layer and how the unlabeled rows joined from the run: leave out "
                f"{', '.join(given)}"
            )
        bundle, _ = train_best(cache, from_run, o)
    else:
        bundle = run_train(cache, o)
    if not quiet or as_json:
        emit({"model": o.out, **bundle.describe()}, as_json, train_text)


@main.command(context_settings=CONTEXT)
@click.argument("model", type=NonEmptyPath())
@click.argument("data", type=NonEmptyPath())
@value_options(RunOptions)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--predictions",
    type=NonEmptyPath(dir_okay=False),
    help="Write path,label,predicted per image, p and p_label (its probability of its answer and of the label), and "
    "familiarity where the model keeps training rows (CSV).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model, data, quiet, predictions, as_json, **options):
    """Score MODEL on held-out labelled DATA: a folder of class folders, a CSV manifest, or a cache made with
    the model's embedding settings. Images the model was fit on (the same bytes) are left out, and named.

    \b
    Example:
      featurebank evaluate models/flowers.fbmodel ../shared/data/flowers/val
    """
    from classifiers.bundle import evaluate as run_evaluate
    from classifiers.predictions import write_evaluation_csv
    from classifiers.report.text import evaluate_text
    from embedder.kernel.destination import check_destination

    if predictions:
        check_destination(predictions, [model, data], "--predictions")
    result = run_evaluate(model, data, made(RunOptions, options), progress=not quiet and sys.stderr.isatty())
    if predictions:
        write_evaluation_csv(result, predictions)
    emit({k: v for k, v in result.items() if k != "predictions"}, as_json, evaluate_text)


@main.command(context_settings=CONTEXT)
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] IMAGES...", type=NonEmptyPath())
@click.option(
    "--head",
    "--imagenet",
    "imagenet",
    is_flag=True,
    help="Classify with the backbone's own head: ImageNet, or a fine-tuned checkpoint's classes (no MODEL).",
)
@click.option(
    "-b",
    "--backbone",
    callback=checked(BACKBONE),
    metavar="BACKBONE",
    help=f"With --head (default: what a finetune checkpoint given by -w records, else {ExtractOptions.backbone}).",
)
@value_options(RunOptions)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-k", "--top", type=click.IntRange(1), default=TOP, show_default=True, help="Classes listed per image.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="As --format json (the flag every other command has).")
@click.option("-o", "--out", type=NonEmptyPath(dir_okay=False), help="Write there instead of stdout.")
@click.option(
    "--sort",
    type=click.Choice(["confidence", "path"]),
    default="confidence",
    show_default=True,
    help="On a cache: the pseudo-labels least confident first (to review), or by path.",
)
@click.option(
    "--labels",
    type=NonEmptyPath(exists=True, dir_okay=False),
    metavar="LABELLED.csv",
    multiple=True,
    callback=given_once(LABELS_ONCE),
    help="On a cache: the rows this path,label CSV labels are skipped too (as cv and train --labels read it).",
)
def predict(args, imagenet, backbone, quiet, top, fmt, as_json, out, sort, labels, **options):
    """Classify images with a trained MODEL (or, with --head, the backbone's own head).

    IMAGES are image files, folders, a CSV manifest or a .txt list. They are embedded with exactly the
    model's settings; a file that cannot be read gets a row with its error, never a stop. Each image's
    familiarity is the share of the model's training images at least as far from their nearest ones:
    under 0.01 it is unlike them, and named on stderr (its class is a guess whatever its probability).

    MODEL CACHE.h5 (a cache made with the model's settings): pseudo-labels for its unlabeled rows (all of
    them when it has no labels), path,label,confidence (and fit_on, familiarity), least confident first: a
    list to review, its paths as the cache names them; reviewed rows go into your --labels CSV (path,label).

    \b
    Example:
      featurebank predict models/flowers.fbmodel photo1.jpg photo2.jpg
      featurebank predict models/flowers.fbmodel cache/unlabeled.h5 -o pseudo-labels.csv
      featurebank predict --imagenet -b mobilenet_v2 -w ../shared/weights/mobilenet_v2-imagenet.pth photos/ -k 5
    """
    from classifiers.bundle import is_cache_file, predict_imagenet, prediction_outcome, pseudo_labels
    from classifiers.bundle import predict as run_predict
    from classifiers.predictions import (
        cache_note,
        predict_notes,
        predictions_text,
        pseudo_label_notes,
        write_predictions,
    )
    from embedder.kernel.destination import check_destination

    o, progress = made(RunOptions, options), not quiet and sys.stderr.isatty()
    fmt = "json" if as_json else fmt
    if out:
        check_destination(out, [*args, labels], "-o")
    if not imagenet and len(args) == 2 and is_cache_file(args[1]):
        result = pseudo_labels(args[0], args[1], sort=sort, trust_pickle=o.trust_pickle, labels=labels)
        if out:
            write_predictions(result, out, fmt)
        else:
            click.echo(predictions_text(result, fmt), nl=False)
        if not quiet:
            click.echo("\n".join(pseudo_label_notes(result, out)), err=True)
        return
    if labels:
        raise click.UsageError("--labels goes with MODEL CACHE.h5 (pseudo-labels of a cache), not with images")
    if imagenet:
        from embedder.backbones.registry import recorded_backbone

        weights = o.weights or ExtractOptions.weights
        backbone = backbone or recorded_backbone(weights) or ExtractOptions.backbone
        head = ExtractOptions(backbone=backbone, weights=weights, **o.extract_overrides())
        result = predict_imagenet(list(args), head, top=top, cache=o.cache, out=out, fmt=fmt, progress=progress)
    elif len(args) < 2:
        raise click.UsageError("give a MODEL file and at least one image (or --head to use the backbone's own head)")
    else:
        result = run_predict(args[0], list(args[1:]), o, top=top, out=out, fmt=fmt, progress=progress)
    if not out:  # written by the call
        click.echo(predictions_text(result, fmt), nl=False)
    message, all_failed = prediction_outcome(result)
    if all_failed:
        raise FeaturebankError(message)
    if not quiet:
        note = result.get("familiarity", {}).get("note")
        notes = predict_notes(result) if "calibrated" in result else []  # not --head's softmax of its logits
        click.echo(
            "\n".join(
                ([message] if message else []) + notes + ([f"note: {note}"] if note else []) + [cache_note(result)]
            ),
            err=True,
        )


@main.command("export", context_settings=CONTEXT)
@click.argument("model", type=NonEmptyPath())
@value_options(ExportOptions)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export(model, as_json, **options):
    """Write MODEL as one ONNX file: uint8 images (N x crop x crop x 3, RGB) in, class scores and index out.

    MODEL is a model file from train (its backbone, layer and classifier) or a checkpoint from finetune
    (a .pth: its own head). Normalization, the backbone, pooling and the classifier are inside the graph;
    the class names and the preprocessing are in its metadata. Running it needs onnxruntime only
    (examples/classify_folder.py).

    \b
    Example:
      featurebank export models/flowers.fbmodel -o flowers.onnx
      featurebank export models/flowers.fbmodel -o flowers-int8.onnx --precision int8
      featurebank export runs/ants-finetune/best.pth -b mobilenet_v2 -o ants.onnx
    """
    from workflows.deploy.entry import export as run_export
    from workflows.deploy.entry import export_text

    result = run_export(model, made(ExportOptions, options))
    emit(result.to_dict(), as_json, export_text)


@main.command(context_settings=CONTEXT)
@click.argument("old", type=NonEmptyPath())
@click.argument("new", type=NonEmptyPath(dir_okay=False))
def convert(old, new):
    """Rewrite OLD, a model file of an older featurebank (a joblib pickle), as NEW in the safe format, once.

    OLD is unpickled, which runs whatever code the file names: convert only files you made or trust. NEW is
    loaded back before it is reported; after that no --trust-pickle is needed.

    \b
    Example:
      featurebank convert models/flowers.joblib models/flowers.fbmodel
    """
    from classifiers.modelfile import convert as run_convert

    done = run_convert(old, new)
    click.echo(
        f"wrote {done['model']}: {done['classifier']}, classes {', '.join(done['classes'])} (from {done['from']})"
    )


@main.command("report", context_settings=CONTEXT)
@click.argument("run_dir", type=NonEmptyPath())
@click.option(
    "--images",
    type=NonEmptyPath(file_okay=False),
    help="Where the images are now, if they moved: the folder the report's paths are relative to.",
)
def report_command(run_dir, images):
    """Render RUN_DIR/report.html again from RUN_DIR/report.json (a cv --out or finetune folder); print its path.

    Needs neither the cache nor the model: thumbnails already in RUN_DIR/thumbs are kept, missing ones are
    made from the images if they are still there (else a placeholder). Opens nothing.

    \b
    Example:
      featurebank report runs/flowers-cv
      featurebank report runs/flowers-cv --images /mnt/photos/flowers/train
    """
    from workflows.render import write_html

    click.echo(write_html(run_dir, root=images))


@main.command(context_settings=CONTEXT)
@click.argument("manifest", type=NonEmptyPath(exists=True, dir_okay=False))
@click.argument("corrections", type=NonEmptyPath(exists=True, dir_okay=False))
@click.option("-o", "--out", type=NonEmptyPath(dir_okay=False), required=True, help="The corrected manifest to write.")
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
def relabel(manifest, corrections, out, as_json):
    """Write a copy of the CSV MANIFEST with the labels of CORRECTIONS applied.

    CORRECTIONS is the label_issues.csv of a cv --out folder, less the rows you do not accept (each row left
    takes its suggested label), or with a new_label column (an empty cell: no change, counted and said).
    No manifest yet? featurebank manifest FOLDER -o FILE.csv writes one. Rows whose label is no longer
    the manifest's are skipped and counted. Extract the new manifest again: only the labels change.

    
    Example:
      featurebank relabel photos.csv runs/photos-cv/label_issues.csv -o photos-fixed.csv
    """
    from classifiers.label_issues import relabel as run_relabel
    from classifiers.label_issues import relabel_text

    emit(run_relabel(manifest, corrections, out), as_json, relabel_text)


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=NonEmptyPath())
@click.option(
    "-o",
    "--out",
    type=NonEmptyPath(dir_okay=False),
    required=True,
    help="The manifest to write (path,label,reason,score; label empty, best first); the contact sheet goes beside "
    "it (TO_LABEL.html, thumbnails in thumbs/).",
)
@value_options(SelectOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the picks as JSON.")
def select(cache, out, as_json, **options):
    """Pick the N unlabeled images of CACHE to label next, and write them as a manifest to fill in.

    With no labels yet, the picks cover the embedding space (one image per k-means cluster); once images of two
    classes or more are labelled (in the cache, or --labels), they cover each class as label spreading from
    those labels draws it (under 5 labelled images per class), then what a probe on the labels is least sure
    of, spread over the space. Never two images of one group, nor near-duplicates, in one batch. Fill in
    the label column, keep every label in one CSV, and give it with --labels.

    \b
    Example:
      featurebank extract photos/ --layout flat -b mobilenet_v2 -w mobilenet_v2-imagenet.pth --cache cache/photos.h5
      featurebank select cache/photos.h5 --budget 50 -o round1.csv
      cp round1.csv labelled.csv          # its label column filled in
      featurebank select cache/photos.h5 --budget 50 --labels labelled.csv -o round2.csv
      tail -n +2 round2.csv >> labelled.csv
    """
    from classifiers.selection import select as run_select
    from classifiers.selection import select_text

    selection = run_select(cache, made(SelectOptions, options), out=out)
    emit(selection.to_dict(), as_json, select_text)


@main.command(context_settings=CONTEXT)
@click.argument("folder", type=NonEmptyPath(file_okay=False))
@click.option("-o", "--out", type=NonEmptyPath(dir_okay=False), required=True, help="The CSV manifest to write.")
@click.option(
    "--layout",
    type=click.Choice(["auto", "classes", "flat"]),
    default="auto",
    show_default=True,
    help="As extract reads FOLDER: class-per-folder (labels) or flat (unlabeled).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def manifest(folder, out, layout, as_json):
    """Write the CSV manifest (path,label) of FOLDER: its images as extract lists them, with their labels.

    The cache extracted from FOLDER takes the manifest as the same input: extracting it into that --cache embeds
    nothing, and after relabel only the labels change.

    \b
    Example:
      featurebank manifest photos/ -o photos.csv
      featurebank relabel photos.csv runs/photos-cv/label_issues.csv -o photos-fixed.csv
      featurebank extract photos-fixed.csv --cache cache/photos.h5
    """
    from embedder.inputs.manifest import manifest_text, write_manifest

    emit(write_manifest(folder, out, layout), as_json, manifest_text)


@main.command(context_settings=CONTEXT)
@click.argument("data", metavar="DATA", type=NonEmptyPath())
@click.option(
    "-o",
    "--out",
    type=NonEmptyPath(file_okay=False),
    default=RUN_FOLDER,
    show_default=True,
    help="Run folder: checkpoints, log, curves, report.",
)
@value_options(FinetuneOptions)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as JSON.")
def finetune(data, out, quiet, as_json, **options):
    """Unfreeze the last blocks of BACKBONE and train them with a new head on DATA, end to end.

    The images are embedded first (reused if there): the frozen linear probe on those features is the
    baseline and the head's starting point (--compare RUN_DIR: cv's best row too). --augment auto (the
    default) runs the frozen layers once over fixed views of each image and trains on their stored output
    where the network splits and fits float16, else on pixels, with a note saying why. The epoch (and early stopping) is chosen on the
    validation images; with --test, the probe, the chosen epoch (and --from-scratch) are compared on the test
    images, which nothing was selected on. Checkpoints every epoch; the best one, OUT/best.pth, works as
    --weights for extract and predict --head.

    --json prints the run: each row of "comparison" has val_accuracy, val_balanced_accuracy, val_f1_macro,
    val_log_loss (the epoch was selected on these), the same as test_* (null without --test), test_right,
    test_total and test_accuracy_interval (the Wilson 95 % interval), and seconds; "reported_on" is "test" or
    "validation", "note" says what that means, and "notes" what the run found (a fine-tuned model below the probe).

    \b
    Example:
      featurebank finetune ../shared/data/flowers/train --val-split 0.2 --test ../shared/data/flowers/val \\
          -b mobilenet_v2 -w ../shared/weights/mobilenet_v2-imagenet.pth --unfreeze 1 --epochs 5 --from-scratch
    """
    from workflows.finetune import finetune as run_finetune
    from workflows.finetune.report import epoch_text, result_text

    def said(epoch, row):
        if not quiet and not as_json:
            click.echo(epoch_text(epoch, row))

    def say(line):  # a note (what the run chose, and why) always, on stderr; the passes' lines as the epochs'
        if line.startswith("note: "):
            click.echo(line, err=True)
        elif not quiet and not as_json:
            click.echo(line)

    result = run_finetune(
        data,
        out,
        made(FinetuneOptions, options),
        progress=not quiet and sys.stderr.isatty(),
        on_epoch_end=said,
        say=say,
    )
    emit(result.to_dict(), as_json, result_text)


if __name__ == "__main__":
    main()
