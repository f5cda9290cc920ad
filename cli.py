"""featurebank's command line: parse, call one function of the Python API, print.

Every command has --help with an example; errors are one line (``Error: ...``) and a non-zero exit.
"""
from __future__ import annotations

import json
import sys
from collections import Counter

import click

from embedder.errors import FeaturebankError

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


class BackboneType(click.ParamType):
    name = "backbone"

    def convert(self, value, param, ctx):
        from embedder.backbones import check_backbone

        try:
            return check_backbone(value)
        except FeaturebankError as exc:
            self.fail(str(exc), param, ctx)


class DeviceType(click.ParamType):
    name = "device"

    def convert(self, value, param, ctx):
        import re

        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            return value
        self.fail(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps", param, ctx)


class ClassifierType(click.ParamType):
    """A zoo spec string, checked at parse time: ``logreg``, ``rbf-svm:pca=128,C=10``."""

    name = "classifier"

    def convert(self, value, param, ctx):
        from classifiers.zoo import parse_spec

        try:
            parse_spec(value)
            return value
        except FeaturebankError as exc:
            self.fail(str(exc), param, ctx)


def split_classifiers(ctx, param, values):
    """-c may be repeated or comma-separated; a ``key=value`` piece belongs to the spec before it."""
    specs: list[str] = []
    for value in values:
        for piece in (p.strip() for p in value.split(",")):
            if not piece:
                continue
            if specs and "=" in piece and ":" not in piece:
                specs[-1] += "," + piece
            else:
                specs.append(piece)
    return [ClassifierType().convert(s, param, ctx) for s in specs] or None


def split_layers(ctx, param, values):
    """--layer may be repeated or comma-separated."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()] or None


def emit(data: dict, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


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
    from embedder.backbones import default_preprocessing, feature_dim, list_backbones, weights_enum

    rows = []
    for name in list_backbones():
        enum = weights_enum(name)
        prep = default_preprocessing(name)
        rows.append({"name": name, "features": feature_dim(name), "default_weights": f"{enum.__name__}.{enum.DEFAULT.name}",
                     "weights": list(enum.__members__), "resize": prep.resize, "crop": prep.crop})

    def human(_):
        click.echo(f"{'backbone':24} {'features':>8}  {'input':>7}  weights (DEFAULT first)")
        for r in rows:
            others = [w for w in r["weights"] if w != r["default_weights"].split(".")[1]]
            click.echo(f"{r['name']:24} {r['features']:>8}  {r['resize']:>3}/{r['crop']:<3}  "
                       f"{r['default_weights'].split('.')[1]} {' '.join(others)}")

    emit(rows, as_json, human)


@main.command(context_settings=CONTEXT)
@click.argument("backbone", type=BackboneType())
@click.option("--size", type=click.IntRange(32), help="Input size (default: the backbone's crop size).")
@click.option("--pooling", type=click.Choice(["avg", "max", "avgmax"]), default="avg", show_default=True,
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
    from embedder.backbones import PENULTIMATE, layer_shapes, resolve_layers, skeleton
    from embedder.features import pooled_dim

    model = skeleton(backbone)
    penultimate = resolve_layers(model, [PENULTIMATE])[0]
    rows = [{"node": n, "shape": list(s), "vector": pooled_dim(s, pooling) if len(s) in (1, 2, 3) else None,
             "penultimate": n == penultimate}
            for n, s in layer_shapes(backbone, size)]

    def human(_):
        click.echo(f"  {'node':40} {'output shape':>18} {'vector':>7}")
        for r in rows:
            click.echo(f"{'*' if r['penultimate'] else ' '} {r['node']:40} {'x'.join(map(str, r['shape'])):>18} "
                       f"{r['vector'] if r['vector'] is not None else '-':>7}")

    emit(rows, as_json, human)


@main.command(context_settings=CONTEXT)
@click.argument("source", metavar="INPUT", type=click.Path())
@click.option("--cache", "cache", type=click.Path(dir_okay=False),
              help="HDF5 file to write (default: cache/<input>-<backbone>-<settings hash>.h5).")
@click.option("-b", "--backbone", default="resnet50", show_default=True,
              help="A torchvision model name (featurebank backbones); checked when the settings are resolved.")
@click.option("-w", "--weights", default="DEFAULT", show_default=True,
              help="A torchvision weights name (DEFAULT, IMAGENET1K_V2, ...), a local .pth state dict, or none.")
@click.option("-l", "--layer", "layer", multiple=True, callback=split_layers,
              help="Node or module name(s), repeated or comma-separated (featurebank layers BACKBONE). [default: penultimate]")
@click.option("--pooling", type=click.Choice(["avg", "max", "avgmax"]), default="avg", show_default=True,
              help="How 4-D maps become one vector per image.")
@click.option("--resize", type=click.IntRange(16), help="Shorter side before cropping (default: from the weights).")
@click.option("--crop", type=click.IntRange(16), help="Center crop size (default: from the weights).")
@click.option("--no-draft", is_flag=True, help="Decode big JPEGs at full size (slower; no reduced-scale decode).")
@click.option("--precision", type=click.Choice(["fp32", "int8", "fp16", "bf16"]), default="fp32", show_default=True,
              help="fp32; int8 (CPU, onnxruntime: calibrated on images of INPUT, rows of its own); fp16/bf16 autocast (GPUs).")
@click.option("--engine", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto", show_default=True,
              help="auto: onnxruntime on the CPU when it measured faster for these settings (measured once), torch on GPUs.")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="Test-time augmentation: flip = the mean of the image's and its left-right mirror's vectors "
                   "(a setting: rows of its own; twice the compute).")
@click.option("--calibration-images", type=click.IntRange(1), default=256, show_default=True,
              help="int8: images drawn reproducibly from INPUT to calibrate on.")
@click.option("--calibration", type=click.Choice(["minmax"]), default="minmax", show_default=True,
              help="int8: how activation ranges are read from the calibration images.")
@click.option("--calibration-from", "calibration_from", type=click.Path(dir_okay=False),
              help="int8: use the int8 engine of this cache (e.g. embed val/ with train/'s calibration); its "
                   "calibration options replace --calibration-images, --calibration and the draw's --seed.")
@click.option("--device", type=DeviceType(), default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="Decoding processes (default: on a GPU cores-1 up to 8; on a CPU none: decoding threads share the cores with the engine).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random init for --weights none, and of the int8 calibration draw.")
@click.option("--layout", type=click.Choice(["auto", "classes", "flat"]), default="auto", show_default=True,
              help="A folder: class-per-folder (labels) or flat (unlabeled).")
@click.option("--max-pixels", type=click.IntRange(1), default=89_478_485, show_default=True,
              help="Larger images are skipped as decompression bombs.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any file could not be embedded (good rows are kept).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def extract(source, cache, backbone, weights, layer, pooling, resize, crop, no_draft, precision, engine, tta,
            calibration_images, calibration, calibration_from, device, batch_size, workers, seed, layout, max_pixels, strict, quiet,
            as_json):
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

    from embedder.job import extract as run_extract, int8_of_cache
    from embedder.settings import Int8

    int8, engine_dir = (Int8(calibration_images, seed, calibration) if precision == "int8" else None), None
    if calibration_from:
        if precision != "int8":
            raise click.UsageError("--calibration-from goes with --precision int8")
        int8, engine_dir = int8_of_cache(calibration_from)
    summary = run_extract(source, cache, backbone=backbone, weights=weights, layers=layer, pooling=pooling,
                          resize=resize, crop=crop, draft=not no_draft, precision=precision, device=device,
                          batch_size=batch_size, workers=workers, seed=seed, layout=layout, strict=strict,
                          max_pixels=max_pixels, engine=engine, int8=int8, engine_dir=engine_dir,
                          progress=not quiet and sys.stderr.isatty(), tta=tta)
    if (quiet and not as_json) or not Rank.from_env().leader:  # under torchrun, rank 0 speaks for the job
        return

    def human(s):
        click.echo(f"{s['rows']} rows in {s['cache']}")
        engine = f"{s['engine']['name']} on {s['device']}" if s["engine"] else s["device"]
        engine += f", {s['ranks']} ranks" if s["ranks"] > 1 else ""
        for step in s["prepared"]:
            click.echo(f"  prepared: {step}")
        click.echo(f"  embedded {s['embedded']} ({s['images_per_second']} images/s, {engine}), "
                   f"kept {s['reused']}, removed {s['removed']}, failed {len(s['failed'])}, ignored {s['ignored']} "
                   f"non-image files, {s['seconds']} s")
        for f in s["failed"][:20]:
            click.echo(f"  skipped {f['path']}: {f['reason']}")
        if len(s["failed"]) > 20:
            click.echo(f"  ... and {len(s['failed']) - 20} more (featurebank info --json)")

    emit(summary.to_dict(), as_json, human)


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description on stdout.")
def info(cache, as_json):
    """Describe a cache: settings, rows per class, layers, skipped files, library versions.

    \b
    Example:
      featurebank info cache/ants.h5
    """
    from embedder.cache import CacheReader

    reader = CacheReader(cache)
    data = {"cache": reader.path, "rows": len(reader), "classes": dict(Counter(reader.labels)) if reader.labels is not None else {},
            "layers": reader.dims, "settings": reader.settings, "source": reader.attrs["source"],
            "root": reader.attrs["root"], "updated": reader.attrs["updated"],
            "failed": [{"path": p, "reason": r} for p, r in zip(reader.failures["path"], reader.failures["reason"])],
            "pending_parts": reader.pending_parts, "info": reader.info}

    def human(d):
        s = d["settings"]
        click.echo(f"{d['cache']}: {d['rows']} rows, updated {d['updated']}")
        click.echo(f"  input        {d['source']}")
        click.echo(f"  backbone     {s['backbone']}  weights {s['weights']}"
                   + (f" ({d['info'].get('weights_file')})" if d["info"].get("weights_file") else ""))
        p = s["preprocessing"]
        click.echo(f"  preprocess   resize {p['resize']} ({p['interpolation']}), crop {p['crop']}, mean {p['mean']}, "
                   f"std {p['std']}, draft {p['draft']}; precision {s['precision']}; pooling {s['pooling']}"
                   + (f"; tta {s['tta']}" if s.get("tta", "none") != "none" else ""))
        click.echo("  layers       " + ", ".join(f"{k} [{v}]" for k, v in d["layers"].items()))
        if d["classes"]:
            click.echo("  classes      " + ", ".join(f"{k} {v}" for k, v in d["classes"].items()))
        else:
            click.echo("  classes      none (unlabeled)")
        click.echo(f"  skipped      {len(d['failed'])} files")
        for f in d["failed"][:20]:
            click.echo(f"    {f['path']}: {f['reason']}")
        if d["pending_parts"]:
            click.echo(f"  unfinished   {d['pending_parts']} batches of an interrupted run wait in {d['cache']}.parts; "
                       f"run extract again to merge them")
        runs = d["info"].get("runs", [])
        if runs:
            last = runs[-1]
            e = last["engine"]
            click.echo(f"  engine       {e['name']} on {e.get('device', 'cpu')} ({e.get('threads', '?')} threads), last run "
                       f"{last['time']}: {last['embedded']} images at {last['images_per_second']} images/s "
                       f"({len(runs)} run(s) recorded)")
        int8 = d["info"].get("int8")
        if int8:
            calib = int8.get("calibration") or {}
            for layer, c in int8["cosine_to_fp32"].items():
                click.echo(f"  int8         {layer}: cosine to fp32 mean {c['mean']:.4f}, worst {c['min']:.4f}, on the "
                           f"{c['images']} calibration images ({calib.get('method', '?')}, seed {calib.get('seed', '?')})")
        versions = d["info"].get("versions", {})
        click.echo("  versions     " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    emit(data, as_json, human)



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
    from classifiers.zoo import describe, get_spec, list_classifiers, search_grid

    rows = [{"name": n, "pipeline": describe(n), "probabilities": get_spec(n).probabilities,
             "search": {k.removeprefix("clf__"): v for k, v in search_grid(n).items()}, "summary": get_spec(n).summary}
            for n in list_classifiers()]

    def human(_):
        for r in rows:
            click.echo(f"{r['name']:14} {r['summary']}")
            click.echo(f"{'':14}   {r['pipeline']}")
            grid = ", ".join(f"{k} in {v}" for k, v in r["search"].items()) or "nothing to tune"
            click.echo(f"{'':14}   probabilities: {'yes' if r['probabilities'] else 'no'}; --search: {grid}")

    emit(rows, as_json, human)


@main.command(context_settings=CONTEXT)
@click.argument("caches", metavar="CACHE...", nargs=-1, required=True, type=click.Path())
@click.option("-c", "--classifier", "classifier", multiple=True, callback=split_classifiers,
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
    from classifiers.report import leaderboard_lines, model_name, report_dict, significance_note, write_report

    if scheduler and n_jobs != 1:
        raise click.UsageError("--n-jobs does not apply with --scheduler: every thread of the Dask cluster is used")

    report = cross_validate(list(caches), classifier, layer, folds=folds, repeats=repeats, seed=seed, groups=groups,
                            search=search, inner_folds=inner_folds, n_jobs=n_jobs, scheduler=scheduler,
                            progress=not quiet and sys.stderr.isatty())
    data = report_dict(report, suspicious)
    files = write_report(report, out, suspicious, data) if out else {}

    def human(d):
        cvd = d["cv"]
        click.echo(f"{d['rows']} images, {len(d['classes'])} classes, {cvd['folds']} folds x {cvd['repeats']} "
                   f"({cvd['splitter']}{', nested search' if cvd['search'] else ''}), {d['seconds']:.1f} s")
        if len(d["caches"]) > 1:
            for c in d["caches"]:
                click.echo(f"  {c['backbone']}: {c['cache']}")
            click.echo(f"  folds from {cvd['folds_from']}")
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in leaderboard_lines(d)
                if not line.startswith("|--")]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        click.echo(significance_note(d))
        susp = d["suspicious"]
        if susp["images"]:
            click.echo(f"\nMost suspicious images ({model_name(d, susp)}, out-of-fold):")
            for i in susp["images"][:10]:
                click.echo(f"  {i['path']}: labelled {i['label']}, predicted {i['predicted']} ({i['confidence']:.2f})")
        if d["outliers"]["images"]:
            click.echo(f"\nLeast like any other image (nearest-neighbour cosine similarity on {d['outliers']['layer']}):")
            for i in d["outliers"]["images"][:5]:
                click.echo(f"  {i['path']}: {i['similarity']:.2f} (nearest {i['nearest']})")
        conflicting = [g for g in d["duplicates"] if g["conflicting"]]
        if d["duplicates"]:
            click.echo(f"\n{len(d['duplicates'])} groups of identical files ({len(conflicting)} with different labels)")
        for name, path in files.items():
            click.echo(f"{name:16} {path}")

    emit(data, as_json, human)


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=click.Path())
@click.option("-c", "--classifier", type=ClassifierType(), default="logreg", show_default=True,
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

    bundle = run_train(cache, classifier, layer, out, seed=seed, search=search, groups=groups)
    data = {"model": out, **bundle.describe()}

    def human(d):
        click.echo(f"saved {d['model']}: {d['classifier']} on {d['layer']} ({d['pipeline']})")
        click.echo(f"  {d['trained_on']['rows']} images, classes " + ", ".join(
            f"{c} {n}" for c, n in d["trained_on"]["class_counts"].items()))
        found = d["trained_on"].get("search")
        if found:
            chose = json.dumps(found["best_params"])
            click.echo(f"  search: {found['splitter']} ({found['folds']} folds), chose {chose} (balanced accuracy "
                       f"{found['best_score']:.3f} on the inner folds)")
        s = d["settings"]
        click.echo(f"  embedding: {s['backbone']}, weights {s['weights']}, pooling {s['pooling']}")

    emit(data, as_json, human)


def embedding_run_options(f):
    """Options of commands that may embed images with a model's settings."""
    for option in reversed([
        click.option("--cache", type=click.Path(dir_okay=False),
                     help="Cache for the embedded images (default: under cache/; reused when the images come back)."),
        click.option("-w", "--weights", help="Where the model's weights file is now, if it moved (checked by sha256)."),
        click.option("--device", type=DeviceType(), default="auto", show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True),
        click.option("--workers", type=click.IntRange(0), help="Decoding processes (as in extract)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]):
        f = option(f)
    return f


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
    import csv

    from classifiers.bundle import evaluate as run_evaluate

    result = run_evaluate(model, data, cache=cache, weights=weights, **_run(device, batch_size, workers, quiet))
    if predictions:
        with open(predictions, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["path", "label", "predicted"])
            writer.writeheader()
            writer.writerows(result["predictions"])

    def human(d):
        m = d["metrics"]
        click.echo(f"{d['model']} @ {d['layer']} on {d['rows']} images of {d['source']}")
        click.echo(f"  accuracy {100 * m['accuracy']:.2f} %, balanced accuracy {100 * m['balanced_accuracy']:.2f} %, "
                   f"macro-F1 {100 * m['f1_macro']:.2f} %"
                   + (f", log-loss {m['log_loss']:.4f}" if m["log_loss"] is not None else ""))
        click.echo(f"  {'class':20} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>7}")
        for c, v in d["per_class"].items():
            click.echo(f"  {c:20} {100 * v['precision']:8.1f}% {100 * v['recall']:6.1f}% {100 * v['f1']:5.1f}% {v['support']:7}")
        click.echo("  confusion (rows true, columns predicted): " + " | ".join(
            f"{c}: {' '.join(map(str, row))}" for c, row in zip(d["classes"], d["confusion"])))
        if d["failed"]:
            click.echo(f"  {len(d['failed'])} files without a row: " + "; ".join(
                f"{f['path']}: {f['reason']}" for f in d["failed"][:5]))

    emit({k: v for k, v in result.items() if k != "predictions"}, as_json, human)


@main.command(context_settings=CONTEXT)
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] IMAGES...")
@click.option("--head", "--imagenet", "imagenet", is_flag=True,
              help="Classify with the backbone's own head: ImageNet, or a fine-tuned checkpoint's classes (no MODEL).")
@click.option("-b", "--backbone", type=BackboneType(), default="resnet50", show_default=True, help="With --head.")
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
    from classifiers.bundle import predict as run_predict
    from classifiers.bundle import predict_imagenet

    run = _run(device, batch_size, workers, quiet)
    if imagenet:
        result = predict_imagenet(list(args), backbone=backbone, weights=weights or "DEFAULT", top=top, cache=cache, **run)
    else:
        if len(args) < 2:
            raise click.UsageError("give a MODEL file and at least one image (or --head to use the backbone's own head)")
        result = run_predict(args[0], list(args[1:]), top=top, cache=cache, weights=weights, **run)
    text = _predictions_text(result, fmt, top)
    if out:
        with open(out, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)
    failed = [r for r in result["rows"] if "error" in r]
    if failed and not quiet:
        click.echo(f"{len(failed)} of {len(result['rows'])} images could not be classified: "
                   + "; ".join(f"{r['path']}: {r['error']}" for r in failed[:5]), err=True)


def _predictions_text(result: dict, fmt: str, top: int) -> str:
    import csv
    import io

    if fmt == "json":
        return json.dumps(result, indent=1) + "\n"
    rows = result["rows"]
    top = max([len(r["top"]) for r in rows if "top" in r] or [1])  # no more columns than classes
    labeled = any("label" in r for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    score = "p" if result["score"] == "probability" else "score"
    writer.writerow(["path", *(["label"] if labeled else []), "predicted", score,
                     *[f"{name}{i}" for i in range(2, top + 1) for name in ("class", score)], "error"])
    for r in rows:
        rest = [v for t in r.get("top", [])[1:] for v in (t["class"], f"{t['score']:.4f}")]
        rest += [""] * (2 * (top - 1) - len(rest))
        writer.writerow([r["path"], *([r.get("label", "")] if labeled else []), r.get("predicted", ""),
                         f"{r['score']:.4f}" if "score" in r else "", *rest, r.get("error", "")])
    return buffer.getvalue()



@main.command("export", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False), required=True, help="The ONNX file to write.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]),
              help="int8: the backbone calibrated as extract --precision int8 does, the head in fp32. "
                   "[default: the model's own precision]")
@click.option("-b", "--backbone", type=BackboneType(), help="A checkpoint's architecture (default: what it records).")
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

    int8 = Int8(calibration_images, seed)
    if model.lower().endswith((".pth", ".pt", ".ckpt", ".bin", ".tar")):
        from embedder.deploy import export_checkpoint

        result = export_checkpoint(model, out, backbone=backbone, precision=precision or "fp32", images=images,
                                   int8=int8)
    else:
        from classifiers.bundle import export as export_bundle

        result = export_bundle(model, out, precision=precision, weights=weights, images=images, int8=int8)

    def human(d):
        m = d["metadata"]
        prep, head = m["preprocessing"], m["output"]["head"]
        how = {"folded": "folded into one matrix product", "skl2onnx": "through skl2onnx",
               "softmax": "softmax of its logits"}[head]
        click.echo(f"{d['precision']}, {d['bytes'] / 1e6:.1f} MB, {len(m['classes'])} classes, "
                   f"{'probabilities' if d['output'] == 'probability' else 'decision scores'} (head {how})")
        click.echo(f"  input: uint8 N x {prep['crop']} x {prep['crop']} x 3 RGB after resizing the shorter side to "
                   f"{prep['resize']} ({prep['interpolation']}) and a center crop")
        a = d["accuracy"]
        if a:
            of = (a.get("source") or "").split(":", 1)[-1]
            click.echo(f"  accuracy on {a['images']} images{' of ' + of if of else ''}: fp32 {100 * a['fp32']:.2f} %, int8 "
                       f"{100 * a['int8']:.2f} % ({100 * (a['int8'] - a['fp32']):+.2f} points); the same class "
                       f"for {100 * a['agreement']:.1f} % of them")
        click.echo(d["path"])

    emit(result.to_dict(), as_json, human)


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
    from classifiers.html import write_html

    click.echo(write_html(run_dir, root=images))


def unfreeze_type(ctx, param, value):
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise click.BadParameter("give 0 (head only), a number of blocks, or all")
    return n


def views_type(ctx, param, value):
    from embedder.finetune.trunk import parse_views

    try:
        parse_views(value)
    except FeaturebankError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


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
@click.option("-b", "--backbone", type=BackboneType(), default="resnet50", show_default=True)
@click.option("-w", "--weights", default="DEFAULT", show_default=True, help="As in extract: a weights name, a .pth file, none.")
@click.option("--resize", type=click.IntRange(16), help="Shorter side for evaluation (default: from the weights).")
@click.option("--crop", type=click.IntRange(16), help="Crop size (default: from the weights).")
@click.option("--no-draft", is_flag=True, help="Decode big JPEGs at full size (as in extract).")
@click.option("--max-pixels", type=click.IntRange(1), default=89_478_485, show_default=True,
              help="Larger images are skipped as decompression bombs.")
@click.option("--unfreeze", default="1", show_default=True, callback=unfreeze_type,
              help="Train the last N blocks (0: the head only; all: everything). The report names them.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="AdamW learning rate of the head (cosine decay).")
@click.option("--backbone-lr-scale", type=click.FloatRange(0), default=0.1, show_default=True,
              help="The unfrozen pretrained layers learn at lr x this.")
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True, help="On the head's input.")
@click.option("--bn", type=click.Choice(["frozen", "train"]), default="frozen", show_default=True,
              help="frozen: BatchNorm parameters and running statistics stay as they were.")
@click.option("--augment", type=click.Choice(["views", "pixels", "flip", "trivial", "none"]), default="views",
              show_default=True, help="views: the frozen layers run once over --views of each image, each epoch "
              "draws one (fast); pixels (= flip): a new random resized crop and flip every epoch, the whole network "
              "each time; trivial: and TrivialAugment; none.")
@click.option("--views", default="center,flip,crops:2", show_default=True, callback=views_type,
              help="With --augment views: center (the weights' preprocessing), flip (its mirror), crops:N (N fixed "
                   "crops of 25-100 % of the image, every other one mirrored).")
@click.option("--no-probe-init", is_flag=True, help="Start the head at random, not from the linear probe.")
@click.option("--patience", type=click.IntRange(1), default=3, show_default=True, help="Epochs without a better validation accuracy before stopping.")
@click.option("--from-scratch", is_flag=True, help="Also train the same architecture from random weights, for comparison.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DeviceType(), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Mixed precision (fp16/bf16) on a GPU.")
@click.option("--workers", type=click.IntRange(0), help="Decoding processes (as in extract).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as JSON.")
def finetune(data, out, val, val_split, test, drop_test_copies, backbone, weights, resize, crop, no_draft, max_pixels, unfreeze, epochs, lr, backbone_lr_scale,
             weight_decay, batch_size, dropout, bn, augment, views, no_probe_init, patience, from_scratch, resume, seed,
             device, precision, workers, quiet, as_json):
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
    from classifiers.html import write_html
    from embedder.finetune import finetune as run_finetune

    progress = not quiet and sys.stderr.isatty()

    def said(epoch, row):
        if not quiet and not as_json:
            click.echo(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {100 * row['train_accuracy']:.1f} %, "
                       f"val loss {row['val_loss']:.4f} acc {100 * row['val_accuracy']:.1f} % ({row['seconds']:.0f} s)")

    result = run_finetune(data, out, val=val, val_split=val_split, test=test, drop_test_copies=drop_test_copies,
                          backbone=backbone, weights=weights, resize=resize,
                          crop=crop, draft=not no_draft, max_pixels=max_pixels, unfreeze=unfreeze, epochs=epochs, lr=lr, backbone_lr_scale=backbone_lr_scale,
                          weight_decay=weight_decay, batch_size=batch_size, dropout=dropout, bn=bn, augment=augment,
                          probe_init=not no_probe_init, patience=patience, seed=seed, device=device,
                          precision=precision, workers=workers, resume=resume, from_scratch=from_scratch,
                          progress=progress, on_epoch_end=said, views=views)
    result.files["report_html"] = write_html(result.out)

    def human(d):
        click.echo(f"unfrozen: {', '.join(d['blocks']) or 'head only'} ({d['trainable_parameters']:,} trainable parameters)")
        on = "test" if d["reported_on"] == "test" else "val"
        click.echo(d["note"])
        click.echo(f"{'model':48} {on + ' acc %':>10} {'bal. acc %':>10} {'val acc %':>9} {'seconds':>8}")
        for r in d["comparison"]:
            click.echo(f"{r['model']:48} {100 * r[on + '_accuracy']:10.2f} {100 * r[on + '_balanced_accuracy']:10.2f} "
                       f"{100 * r['val_accuracy']:9.2f} {r['seconds']:8.1f}")
        for s in d["skipped"][:10]:
            click.echo(f"skipped {s['path']}: {s['reason']}")
        click.echo(f"best checkpoint  {d['checkpoint']} (epoch {d['best_epoch']})")
        click.echo(f"report           {d['files']['report_html']}")

    emit(result.to_dict(), as_json, human)


if __name__ == "__main__":
    main()
