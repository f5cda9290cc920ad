"""The exported file's `familiarity` output against featurebank's own, and what it costs.

    python benchmarks/deploy_familiarity.py [--work DIR] [--int8]

The MobileNetV2 ImageNet caches of `benchmarks/few_labels.py` (flowers train/ and val/, hymenoptera val/); the
tuned `logreg` trained on flowers train/ (it keeps 1,000 of its rows); exported twice in fp32, as it is and with no
kept rows (the file a model written before 2026-12-07 gives: scores and label only), and with `--int8` once more in
int8. Each file runs on flowers val/ (like the training images) and hymenoptera val/ (unlike them), decoded
beforehand, batch 32. Prints a Markdown table: file size; images/s (best of 3, the files in turn); the share of each
image set under 0.01; and how far the file's familiarity is from featurebank's (`Bundle.familiarity.p_values` on
the cache's rows of the same images: the torch backbone's vectors, where the file has ONNX Runtime's, or int8's).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "featurebank-familiarity"))
    parser.add_argument("--caches", default=str(ROOT / "cache" / "fewlabels"), help="few_labels.py's caches")
    parser.add_argument("--int8", action="store_true", help="also an int8 export (about a minute more)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FEATUREBANK_ENGINE_DIR", str(work / "engines"))

    import onnxruntime as ort
    from few_labels import made

    from classifiers.bundle import train
    from embedder.cache.hdf5 import CacheReader
    from embedder.inputs.batches import ImageDataset
    from embedder.kernel.preprocess import Preprocessing
    from workflows.deploy.entry import export_model as export

    caches = pathlib.Path(args.caches)
    caches.mkdir(parents=True, exist_ok=True)
    train_cache = made(caches, "flowers", "train")
    sets = {
        "flowers val/ (like)": made(caches, "flowers", "val"),
        "hymenoptera val/ (unlike)": made(caches, "hymenoptera", "val"),
    }
    bundle = train(train_cache, classifier="logreg", out=str(work / "flowers-logreg.fbmodel"))
    fam = bundle.familiarity

    files = {"fp32, kept rows": export(bundle, str(work / "fp32.onnx"))}
    plain = train(train_cache, classifier="logreg", out=str(work / "plain.fbmodel"))
    plain.reference = None
    plain.__dict__.pop("familiarity", None)
    files["fp32, no kept rows"] = export(plain, str(work / "fp32-plain.onnx"))
    if args.int8:
        files["int8, kept rows"] = export(bundle, str(work / "int8.onnx"), precision="int8")

    first = next(iter(files.values())).metadata["preprocessing"]
    prep = Preprocessing(
        first["resize"],
        first["crop"],
        tuple(first["mean"]),
        tuple(first["std"]),
        first["interpolation"],
        first["draft"],
    )
    pixels, expected = {}, {}
    for name, cache in sets.items():
        reader = CacheReader(cache)
        paths = reader.full_paths()
        dataset = ImageDataset(paths, prep)
        pixels[name] = np.stack([dataset[i][1] for i in range(len(paths))]).transpose(0, 2, 3, 1).copy()
        expected[name] = fam.p_values(reader.features(bundle.layer))

    sessions = {k: ort.InferenceSession(v.path, providers=["CPUExecutionProvider"]) for k, v in files.items()}
    every = np.concatenate(list(pixels.values()))
    seconds = dict.fromkeys(files, np.inf)
    for _ in range(3):
        for k, s in sessions.items():
            outputs = [o.name for o in s.get_outputs()]
            started = time.perf_counter()
            for i in range(0, len(every), args.batch):
                s.run(outputs, {"images": every[i : i + args.batch]})
            seconds[k] = min(seconds[k], time.perf_counter() - started)

    print(
        "| file | MB | images/s (both sets) | images | under 0.01: the file / featurebank | flagged by both | "
        "largest difference from featurebank | rows more than a step apart |"
    )
    print("|---|--:|--:|---|--:|--:|--:|--:|")
    for k, s in sessions.items():
        has = "familiarity" in [o.name for o in s.get_outputs()]
        for n in sets:
            cells = ["–"] * 4
            if has:
                got = np.concatenate(
                    [
                        s.run(["familiarity"], {"images": pixels[n][i : i + args.batch]})[0]
                        for i in range(0, len(pixels[n]), args.batch)
                    ]
                ).astype(np.float64)
                diff = np.abs(got - expected[n])
                low, low_fb = got < 0.01, expected[n] < 0.01
                cells = [
                    f"{low.sum()} / {low_fb.sum()}",
                    f"{(low & low_fb).sum()}",
                    f"{diff.max():.4f}",
                    f"{int((diff > fam.floor + 1e-6).sum())} of {len(got)}",
                ]
            print(
                f"| {k} | {files[k].bytes / 1e6:.1f} | {len(every) / seconds[k]:.1f} | {n} ({len(pixels[n])}) | "
                + " | ".join(cells)
                + " |"
            )
    print(
        f"\n{len(fam.reference)} kept rows, k = {fam.k}; a step is 1 / (n + 1) = {fam.floor:.5f}; images/s over "
        f"{len(every)} images, batch {args.batch}, {os.cpu_count()} CPUs visible"
    )
    head_alone(bundle, args.batch)


def head_alone(bundle, batch: int) -> None:
    """The head's graph alone (features in), with and without the familiarity, on random rows: what the output
    adds to a batch, apart from the backbone."""
    import onnxruntime as ort

    from workflows.deploy.head import Head, head_model

    X = np.random.default_rng(0).normal(size=(batch, bundle.familiarity.reference.shape[1])).astype(np.float32)
    for fam in (None, bundle.familiarity):
        head = Head(bundle.classes, bundle.pipeline, bundle.classifier, X, bundle.calibration, bundle.scores, fam)
        model, _ = head_model(head, X.shape[1], 17, 8)
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = [o.name for o in s.get_outputs()]
        best = np.inf
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(20):
                s.run(outputs, {"features": X})
            best = min(best, (time.perf_counter() - started) / 20)
        print(f"head alone, {'with' if fam else 'without'} familiarity: {1000 * best:.2f} ms a batch of {batch}")


if __name__ == "__main__":
    main()
