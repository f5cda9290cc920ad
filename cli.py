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
@click.option("-b", "--backbone", type=BackboneType(), default="resnet50", show_default=True,
              help="A torchvision model name (featurebank backbones).")
@click.option("-w", "--weights", default="DEFAULT", show_default=True,
              help="A torchvision weights name (DEFAULT, IMAGENET1K_V2, ...), a local .pth state dict, or none.")
@click.option("-l", "--layer", "layer", multiple=True, callback=split_layers,
              help="Node or module name(s), repeated or comma-separated (featurebank layers BACKBONE). [default: penultimate]")
@click.option("--pooling", type=click.Choice(["avg", "max", "avgmax"]), default="avg", show_default=True,
              help="How 4-D maps become one vector per image.")
@click.option("--resize", type=click.IntRange(16), help="Shorter side before cropping (default: from the weights).")
@click.option("--crop", type=click.IntRange(16), help="Center crop size (default: from the weights).")
@click.option("--no-draft", is_flag=True, help="Decode big JPEGs at full size (slower; no reduced-scale decode).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Autocast precision (fp16/bf16 for GPUs).")
@click.option("--device", type=DeviceType(), default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="Decoding processes (default: on a GPU cores-1 up to 8; on a CPU 0 up to 2 cores, else cores/4).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random init for --weights none.")
@click.option("--layout", type=click.Choice(["auto", "classes", "flat"]), default="auto", show_default=True,
              help="A folder: class-per-folder (labels) or flat (unlabeled).")
@click.option("--max-pixels", type=click.IntRange(1), default=89_478_485, show_default=True,
              help="Larger images are skipped as decompression bombs.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any file could not be embedded (good rows are kept).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def extract(source, cache, backbone, weights, layer, pooling, resize, crop, no_draft, precision, device, batch_size,
            workers, seed, layout, max_pixels, strict, quiet, as_json):
    """Embed every image of INPUT into an HDF5 cache, once.

    INPUT is a class-per-folder tree (labels from folder names), a flat folder (unlabeled), a CSV manifest
    (path,label[,group]) or a .txt list of paths. Running it again embeds only new or changed images and
    continues an interrupted run. Files that cannot be read are skipped and reported.

    \b
    Example:
      featurebank extract ../shared/data/hymenoptera/train -b mobilenet_v2 \\
          -w ../shared/weights/mobilenet_v2-imagenet.pth --cache cache/ants.h5
    """
    from embedder.job import extract as run_extract

    summary = run_extract(source, cache, backbone=backbone, weights=weights, layers=layer, pooling=pooling,
                          resize=resize, crop=crop, draft=not no_draft, precision=precision, device=device,
                          batch_size=batch_size, workers=workers, seed=seed, layout=layout, strict=strict,
                          max_pixels=max_pixels, progress=not quiet and sys.stderr.isatty())
    if quiet and not as_json:
        return

    def human(s):
        click.echo(f"{s['rows']} rows in {s['cache']}")
        click.echo(f"  embedded {s['embedded']} ({s['images_per_second']} images/s on {s['device']}), "
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
                   f"std {p['std']}, draft {p['draft']}; precision {s['precision']}; pooling {s['pooling']}")
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
        versions = d["info"].get("versions", {})
        click.echo("  versions     " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    emit(data, as_json, human)


if __name__ == "__main__":
    main()
