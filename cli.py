"""featurebank's command line: parse, call one function of the Python API, print.

Every command has --help with an example; errors are one line (``Error: ...``) and a non-zero exit.
"""
from __future__ import annotations

import json
import re
import sys

import click

from embedder.decode import DEFAULT_MAX_PIXELS
from embedder.engines import ENGINES
from embedder.errors import FeaturebankError
from embedder.settings import AUGMENTATIONS, CALIBRATIONS, ONNX_PRECISIONS, POOLINGS, PRECISIONS, TORCH_PRECISIONS, TTAS
from embedder.sources import LAYOUTS
from workflows.finetune.options import BN_POLICIES, FinetuneOptions, parse_unfreeze

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Turns FeaturebankError and Ctrl-C into one line and an exit code instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeaturebankError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            if ctx.invoked_subcommand == "finetune":
                click.echo("Interrupted: the last finished epoch is saved (OUT/last.pt); run the same command with "
                           "--resume to continue.", err=True)
            else:
                click.echo("Interrupted: every finished batch is kept; run the same command again to continue.", err=True)
            sys.exit(130)


def checked(parse):
    """A click callback: the value as ``parse`` reads it (None stays None), its one-line error a usage error."""
    def callback(ctx, param, value):
        try:
            return None if value is None else parse(value)
        except FeaturebankError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return callback


def backbone(name: str) -> str:
    from embedder.backbones import check_backbone  # imports torch: only once a backbone is named

    return check_backbone(name)


def classifier(text: str) -> str:
    from classifiers.zoo import parse_spec  # imports scikit-learn: only once a classifier is named

    parse_spec(text)
    return text


def classifier_list(values) -> list[str] | None:
    from classifiers.zoo import split_specs

    return split_specs(values)


def device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise FeaturebankError(f"{name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return name


def split_layers(ctx, param, values):
    """--layer may be repeated or comma-separated."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()] or None


def options(*decorators):
    """Several click options as one decorator, in the order given."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def image_options(draft_help: str):
    """How images are decoded and preprocessed (extract, finetune)."""
    return options(
        click.option("--resize", type=click.IntRange(16), help="Shorter side before cropping (default: from the weights)."),
        click.option("--crop", type=click.IntRange(16), help="Center crop size (default: from the weights)."),
        click.option("--no-draft", "draft", is_flag=True, flag_value=False, default=True, help=draft_help),
        click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
                     help="Larger images are skipped as decompression bombs."))


def run_options(workers_help: str):
    """Where and how fast images are pushed through a network."""
    return options(
        click.option("--device", callback=checked(device), default="auto", show_default=True, metavar="DEVICE",
                     help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True),
        click.option("--workers", type=click.IntRange(0), help=workers_help))


def emit(data, as_json: bool, text) -> None:
    """``data`` as JSON, or the lines ``text(data)`` returns."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else "\n".join(text(data)))


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="featurebank")
def main():
    """Image classification by transfer learning: embed images once with a frozen pretrained CNN,
    then train classical classifiers on the cached vectors.

    \b
    Start with:
      featurebank extract path/to/images --backbone resnet50 --weights DEFAULT
      featurebank info cache/<file>.h5
    """


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list on stdout.")
def backbones(as_json):
    """List the backbones (every torchvision classification model) with their feature sizes.

    \b
    Example:
      featurebank backbones --json
    """
    from embedder.catalog import backbone_rows, backbones_text

    emit(backbone_rows(), as_json, backbones_text)


@main.command(context_settings=CONTEXT)
@click.argument("backbone", callback=checked(backbone))
@click.option("--size", type=click.IntRange(32), help="Input size (default: the backbone's crop size).")
@click.option("--pooling", type=click.Choice(POOLINGS), default="avg", show_default=True,
              help="Pooling, for the vector sizes shown.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list on stdout.")
def layers(backbone, size, pooling, as_json):
    """List the node names of BACKBONE that --layer accepts, with output shapes and vector sizes.

    The penultimate node (the default layer) is marked with *.

    \b
    Example:
      featurebank layers resnet50
      featurebank extract photos/ -b resnet50 --layer layer3,penultimate
    """
    from embedder.catalog import layer_rows, layers_text

    emit(layer_rows(backbone, size, pooling), as_json, layers_text)


@main.command(context_settings=CONTEXT)
@click.argument("source", metavar="INPUT", type=click.Path())
@click.option("--cache", "cache", type=click.Path(dir_okay=False),
              help="HDF5 file to write (default: cache/<input>-<backbone>-<settings hash>.h5).")
@click.option("-b", "--backbone", default="resnet50", show_default=True,
              help="A torchvision model name (featurebank backbones); checked when the settings are resolved.")
@click.option("-w", "--weights", default="DEFAULT", show_default=True,
              help="A torchvision weights name (DEFAULT, IMAGENET1K_V2, ...), a local .pth state dict, or none.")
@click.option("-l", "--layer", "layers", multiple=True, callback=split_layers,
              help="Node or module name(s), repeated or comma-separated (featurebank layers BACKBONE). [default: penultimate]")
@click.option("--pooling", type=click.Choice(POOLINGS), default="avg", show_default=True,
              help="How 4-D maps become one vector per image.")
@image_options("Decode big JPEGs at full size (slower; no reduced-scale decode).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp32; int8 (CPU, onnxruntime: calibrated on images of INPUT, rows of its own); fp16/bf16 autocast (GPUs).")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="auto: onnxruntime on the CPU when it measured faster for these settings (measured once), torch on GPUs.")
@click.option("--tta", type=click.Choice(TTAS), default="none", show_default=True,
              help="Test-time augmentation: flip = the mean of the image's and its left-right mirror's vectors "
                   "(a setting: rows of its own; twice the compute).")
@click.option("--calibration-images", type=click.IntRange(1), default=256, show_default=True,
              help="int8: images drawn reproducibly from INPUT to calibrate on.")
@click.option("--calibration", type=click.Choice(CALIBRATIONS), default="minmax", show_default=True,
              help="int8: how activation ranges are read from the calibration images.")
@click.option("--calibration-from", "calibration_from", type=click.Path(dir_okay=False),
              help="int8: use the int8 engine of this cache (e.g. embed val/ with train/'s calibration); its "
                   "calibration options replace --calibration-images, --calibration and the draw's --seed.")
@run_options("Decoding processes (default: on a GPU cores-1 up to 8; on a CPU none: decoding threads share the "
             "cores with the engine).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random init for --weights none, and of the int8 calibration draw.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
              help="A folder: class-per-folder (labels) or flat (unlabeled).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any file could not be embedded (good rows are kept).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def extract(source, cache, precision, calibration_images, calibration, calibration_from, seed, quiet, as_json,
            **options):
    """Embed every image of INPUT into an HDF5 cache, once.

    INPUT is a class-per-folder tree (labels from folder names), a flat folder (unlabeled), a CSV manifest
    (path,label[,group]) or a .txt list of paths. Running it again embeds only new or changed images and
    continues an interrupted run. Files that cannot be read are skipped and reported. Under torchrun each
    rank embeds its share on its own device and rank 0 merges and prints.

    \b
    Example:
      featurebank extract ../shared/data/hymenoptera/train -b mobilenet_v2 \\
          -w ../shared/weights/mobilenet_v2-imagenet.pth --cache cache/ants.h5
      torchrun --nproc_per_node 4 -m cli extract photos/ --cache cache/photos.h5
    """
    from embedder.distributed import Rank
    from embedder.job import extract as run_extract, int8_request
    from embedder.views import extract_text

    if calibration_from and precision != "int8":
        raise click.UsageError("--calibration-from goes with --precision int8")
    int8, engine_dir = int8_request(precision, calibration_images, seed, calibration, calibration_from)
    summary = run_extract(source, cache, precision=precision, seed=seed, int8=int8, engine_dir=engine_dir,
                          progress=not quiet and sys.stderr.isatty(), **options)
    if (quiet and not as_json) or not Rank.from_env().leader:  # under torchrun, rank 0 speaks for the job
        return
    emit(summary.to_dict(), as_json, extract_text)


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description on stdout.")
def info(cache, as_json):
    """Describe a cache: settings, rows per class, layers, skipped files, library versions.

    \b
    Example:
      featurebank info cache/ants.h5
    """
    from embedder.views import cache_text, describe_cache

    emit(describe_cache(cache), as_json, cache_text)


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
    from classifiers.views import classifier_rows, classifiers_text

    emit(classifier_rows(), as_json, classifiers_text)


@main.command(context_settings=CONTEXT)
@click.argument("caches", metavar="CACHE...", nargs=-1, required=True, type=click.Path())
@click.option("-c", "--classifier", "classifier", multiple=True, callback=checked(classifier_list),
              help="Zoo spec(s), repeated or comma-separated (featurebank classifiers). [default: all]")
@click.option("-l", "--layer", "layer", multiple=True, callback=split_layers,
              help="Layer(s) of the cache, repeated or comma-separated; a+b is both side by side. "
                   "[default: all of the cache's]")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Repeat the k folds with other shuffles.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds and of random classifiers.")
@click.option("--groups/--no-groups", default=None,
              help="Keep each group's images in one fold; an image without a group is a group of its own "
                   "(default: when the cache has groups).")
@click.option("--search", is_flag=True, help="Tune C, gamma, k... by inner cross-validation in each fold (nested).")
@click.option("--inner-folds", type=click.IntRange(2), default=3, show_default=True, help="Folds of --search.")
@click.option("-j", "--n-jobs", type=int, default=1, show_default=True, help="Folds fitted in parallel (-1: all cores).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run every fit on this Dask scheduler (tcp://host:8786) through joblib's Dask backend; needs "
                   "pip install -e \".[dask]\". Same report as a local run.")
@click.option("-o", "--out", type=click.Path(file_okay=False),
              help="Write report.json, report.md, report.html (with thumbs/), leaderboard.png, leaderboard.csv, "
                   "confusion.png, map.png and predictions/*.csv here.")
@click.option("--suspicious", type=click.IntRange(0), default=20, show_default=True,
              help="How many suspicious images the report lists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON on stdout.")
def cv(caches, classifier, layer, folds, repeats, seed, groups, search, inner_folds, n_jobs, scheduler, out, suspicious,
       quiet, as_json):
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
    """
    from classifiers.crossval import cross_validate
    from classifiers.report import report_dict, write_report
    from classifiers.views import cv_text

    if scheduler and n_jobs != 1:
        raise click.UsageError("--n-jobs does not apply with --scheduler: every thread of the Dask cluster is used")

    report = cross_validate(list(caches), classifier, layer, folds=folds, repeats=repeats, seed=seed, groups=groups,
                            search=search, inner_folds=inner_folds, n_jobs=n_jobs, scheduler=scheduler,
                            progress=not quiet and sys.stderr.isatty())
    data = report_dict(report, suspicious)
    files = write_report(report, out, suspicious, data) if out else {}
    emit(data, as_json, lambda d: cv_text(d, files))


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.option("-c", "--classifier", callback=checked(classifier), default="logreg", show_default=True,
              help="A zoo spec (featurebank classifiers).")
@click.option("-l", "--layer", help="Layer of the cache. [default: its first]")
@click.option("-o", "--out", type=click.Path(dir_okay=False), required=True, help="Model file to write (.joblib).")
@click.option("--search", is_flag=True, help="Choose the hyperparameters by cross-validation first "
                                             "(StratifiedGroupKFold when the cache has groups).")
@click.option("--groups/--no-groups", default=None,
              help="With --search: keep each group's images in one inner fold (default: when the cache has groups).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print what was saved as JSON.")
def train(cache, classifier, layer, out, search, groups, seed, as_json):
    """Fit a classifier on every labelled row of CACHE and save it with its embedding settings.

    The model file is a pickle: load only model files you trust.

    \b
    Example:
      featurebank train cache/flowers.h5 -c rbf-svm -l classifier.0 -o models/flowers.joblib
    """
    from classifiers.bundle import train as run_train
    from classifiers.views import train_text

    bundle = run_train(cache, classifier, layer, out, seed=seed, search=search, groups=groups)
    emit({"model": out, **bundle.describe()}, as_json, train_text)


embedding_run_options = options(  # commands that may embed images with a model's settings
    click.option("--cache", type=click.Path(dir_okay=False),
                 help="Cache for the embedded images (default: under cache/; reused when the images come back)."),
    click.option("-w", "--weights", help="Where the model's weights file is now, if it moved (checked by sha256)."),
    run_options("Decoding processes (as in extract)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."))


def _run(device, batch_size, workers, quiet) -> dict:
    return {"device": device, "batch_size": batch_size, "workers": workers, "progress": not quiet and sys.stderr.isatty()}


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("data", type=click.Path())
@embedding_run_options
@click.option("--predictions", type=click.Path(dir_okay=False), help="Write path,label,predicted per image (CSV).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model, data, cache, weights, device, batch_size, workers, quiet, predictions, as_json):
    """Score MODEL on held-out labelled DATA: a folder of class folders, a CSV manifest, or a cache made with
    the model's embedding settings.

    \b
    Example:
      featurebank evaluate models/flowers.joblib ../shared/data/flowers/val
    """
    from classifiers.bundle import evaluate as run_evaluate
    from classifiers.predictions import write_evaluation_csv
    from classifiers.views import evaluate_text

    result = run_evaluate(model, data, cache=cache, weights=weights, **_run(device, batch_size, workers, quiet))
    if predictions:
        write_evaluation_csv(result, predictions)
    emit({k: v for k, v in result.items() if k != "predictions"}, as_json, evaluate_text)


@main.command(context_settings=CONTEXT)
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] IMAGES...")
@click.option("--head", "--imagenet", "imagenet", is_flag=True,
              help="Classify with the backbone's own head: ImageNet, or a fine-tuned checkpoint's classes (no MODEL).")
@click.option("-b", "--backbone", callback=checked(backbone), default="resnet50", show_default=True, help="With --head.")
@embedding_run_options
@click.option("-k", "--top", type=click.IntRange(1), default=3, show_default=True, help="Classes listed per image.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write there instead of stdout.")
def predict(args, imagenet, backbone, cache, weights, device, batch_size, workers, quiet, top, fmt, out):
    """Classify images with a trained MODEL (or, with --head, the backbone's own head).

    IMAGES are image files, folders, a CSV manifest or a .txt list. They are embedded with exactly the
    model's settings; a file that cannot be read gets a row with its error, never a stop.

    \b
    Example:
      featurebank predict models/flowers.joblib photo1.jpg photo2.jpg
      featurebank predict --imagenet -b mobilenet_v2 -w ../shared/weights/mobilenet_v2-imagenet.pth photos/ -k 5
    """
    from classifiers.bundle import predict as run_predict, predict_imagenet
    from classifiers.predictions import failures_text, predictions_text, write_predictions

    run = _run(device, batch_size, workers, quiet)
    if imagenet:
        result = predict_imagenet(list(args), backbone=backbone, weights=weights or "DEFAULT", top=top, cache=cache, **run)
    else:
        if len(args) < 2:
            raise click.UsageError("give a MODEL file and at least one image (or --head to use the backbone's own head)")
        result = run_predict(args[0], list(args[1:]), top=top, cache=cache, weights=weights, **run)
    if out:
        write_predictions(result, out, fmt)
    else:
        click.echo(predictions_text(result, fmt), nl=False)
    failed = failures_text(result)
    if failed and not quiet:
        click.echo(failed, err=True)


@main.command("export", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False), required=True, help="The ONNX file to write.")
@click.option("--precision", type=click.Choice(ONNX_PRECISIONS),
              help="int8: the backbone calibrated as extract --precision int8 does, the head in fp32. "
                   "[default: the model's own precision]")
@click.option("-b", "--backbone", callback=checked(backbone), help="A checkpoint's architecture (default: what it records).")
@click.option("-w", "--weights", help="Where the model's weights file is now, if it moved (checked by sha256).")
@click.option("--images", type=click.Path(),
              help="int8: labelled images to calibrate on and to compare fp32 with int8 on "
                   "(default: the model's training images; a checkpoint needs them).")
@click.option("--calibration-images", type=click.IntRange(1), default=256, show_default=True,
              help="int8: images drawn reproducibly to calibrate on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the int8 calibration draw.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export(model, out, precision, backbone, weights, images, calibration_images, seed, as_json):
    """Write MODEL as one ONNX file: uint8 images (N x crop x crop x 3, RGB) in, class scores and index out.

    MODEL is a model file from train (its backbone, layer and classifier) or a checkpoint from finetune
    (a .pth: its own head). Normalization, the backbone, pooling and the classifier are inside the graph;
    the class names and the preprocessing are in its metadata. Running it needs onnxruntime only
    (examples/classify_folder.py).

    \b
    Example:
      featurebank export models/flowers.joblib -o flowers.onnx
      featurebank export models/flowers.joblib -o flowers-int8.onnx --precision int8
      featurebank export runs/ants-finetune/best.pth -b mobilenet_v2 -o ants.onnx
    """
    from embedder.settings import Int8
    from workflows.export import export as run_export, export_text

    result = run_export(model, out, precision=precision, backbone=backbone, weights=weights, images=images,
                        int8=Int8(calibration_images, seed))
    emit(result.to_dict(), as_json, export_text)


@main.command("report", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--images", type=click.Path(file_okay=False),
              help="Where the images are now, if they moved: the folder the report's paths are relative to.")
def report_command(run_dir, images):
    """Render RUN_DIR/report.html again from RUN_DIR/report.json (a cv --out or finetune folder); print its path.

    Needs neither the cache nor the model: thumbnails already in RUN_DIR/thumbs are kept, missing ones are
    made from the images if they are still there (else a placeholder). Opens nothing.

    \b
    Example:
      featurebank report runs/flowers-cv
      featurebank report runs/flowers-cv --images /mnt/photos/flowers/train
    """
    from workflows.report import write_html

    click.echo(write_html(run_dir, root=images))


@main.command(context_settings=CONTEXT)
@click.argument("data", metavar="DATA", type=click.Path())
@click.option("-o", "--out", type=click.Path(file_okay=False), default="runs/finetune", show_default=True,
              help="Run folder: checkpoints, log, curves, report.")
@click.option("--val", type=click.Path(), help="Validation images (class folders or manifest). [default: --val-split]")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
              help="Stratified share of DATA held out for validation when there is no --val; with groups (a "
                   "manifest's third column), whole groups: one fold of round(1/share).")
@click.option("--test", type=click.Path(exists=True), help="Test images, apart from DATA and validation: embedded and "
              "scored only after training; the comparison is reported on them. [default: validation numbers, "
              "selection included]")
@click.option("--drop-test-copies", is_flag=True, help="Leave out --test files whose bytes equal a training or "
              "validation image (the report lists them). [default: refuse them before training]")
@click.option("-b", "--backbone", callback=checked(backbone), default="resnet50", show_default=True)
@click.option("-w", "--weights", default="DEFAULT", show_default=True, help="As in extract: a weights name, a .pth file, none.")
@image_options("Decode big JPEGs at full size (as in extract).")
@click.option("--unfreeze", default="1", show_default=True, callback=checked(parse_unfreeze),
              help="Train the last N blocks (0: the head only; all: everything). The report names them.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="AdamW learning rate of the head (cosine decay).")
@click.option("--backbone-lr-scale", type=click.FloatRange(0), default=0.1, show_default=True,
              help="The unfrozen pretrained layers learn at lr x this.")
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True, help="On the head's input.")
@click.option("--bn", type=click.Choice(BN_POLICIES), default="frozen", show_default=True,
              help="frozen: BatchNorm parameters and running statistics stay as they were.")
@click.option("--augment", type=click.Choice(AUGMENTATIONS), default="flip", show_default=True,
              help="flip: random resized crop and flip; trivial: and TrivialAugment.")
@click.option("--no-probe-init", "probe_init", is_flag=True, flag_value=False, default=True,
              help="Start the head at random, not from the linear probe.")
@click.option("--patience", type=click.IntRange(1), default=3, show_default=True, help="Epochs without a better validation accuracy before stopping.")
@click.option("--from-scratch", is_flag=True, help="Also train the same architecture from random weights, for comparison.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--seed", type=int, default=0, show_default=True)
@run_options("Decoding processes (as in extract).")
@click.option("--precision", type=click.Choice(TORCH_PRECISIONS), default="fp32", show_default=True,
              help="Mixed precision (fp16/bf16) on a GPU.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as JSON.")
def finetune(data, out, quiet, as_json, **options):
    """Unfreeze the last blocks of BACKBONE and train them with a new head on DATA, end to end.

    The images are embedded into the cache first (reused if there): the frozen linear probe on those
    features is the baseline and the head's starting point. The epoch (and early stopping) is chosen on the
    validation images; with --test, the probe, the chosen epoch (and --from-scratch) are compared on the test
    images, which nothing was selected on. Checkpoints every epoch; the best one, OUT/best.pth, works as
    --weights for extract and predict --head.

    --json prints the run: each row of "comparison" has val_accuracy, val_balanced_accuracy, val_f1_macro,
    val_log_loss (the epoch was selected on these), the same as test_* (null without --test), and seconds;
    "reported_on" is "test" or "validation", and "note" says what that means.

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

    result = run_finetune(data, out, FinetuneOptions.of(**options), progress=not quiet and sys.stderr.isatty(),
                          on_epoch_end=said)
    emit(result.to_dict(), as_json, result_text)


if __name__ == "__main__":
    main()
