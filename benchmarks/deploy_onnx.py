"""Size, speed and accuracy of `featurebank export` files: MobileNetV2 (ImageNet checkpoint) on flowers.

    python benchmarks/deploy_onnx.py [--work DIR] [--classifiers logreg,rbf-svm]

Extracts flowers train/ and val/ (penultimate layer) into WORK, trains each classifier on train/, exports it in
fp32 and int8 (int8 calibrated on 256 train images, as `extract --precision int8`), then, on the 550 val images:
ONNX Runtime images/s at batch 32 with the images decoded beforehand (decode excluded) and decoded in the loop
in turn with inference (decode included, as examples/classify_folder.py does), and accuracy next to
`featurebank evaluate`'s, both on the val images that are not copies of training photos (evaluate leaves those out:
548 of 550; the table in docs/deployment.md counted all 550). Prints a Markdown table.
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
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
FLOWERS = SHARED / "data" / "flowers"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "featurebank-deploy"),
        help="scratch folder for caches, models and exports (kept, so a second run reuses them)",
    )
    parser.add_argument("--classifiers", default="logreg,rbf-svm")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    os.environ.setdefault("FEATUREBANK_ENGINE_DIR", str(work / "engines"))

    import onnxruntime as ort

    from classifiers.bundle import evaluate, train
    from embedder import extract
    from embedder.inputs.batches import ImageDataset
    from embedder.inputs.sources import list_images
    from workflows.deploy.entry import export_model as export

    common = dict(backbone="mobilenet_v2", weights=str(WEIGHTS), layers=["penultimate"], device="cpu")
    train_cache = extract(str(FLOWERS / "train"), str(work / "flowers-train.h5"), **common).cache
    val_cache = extract(str(FLOWERS / "val"), str(work / "flowers-val.h5"), **common).cache
    listing = list_images(str(FLOWERS / "val"))
    files = [listing.full_path(i) for i in listing.items if not i.error]
    labels = [i.label for i in listing.items if not i.error]

    rows = []
    for spec in args.classifiers.split(","):
        model = str(work / f"flowers-{spec}.joblib")
        train(train_cache, classifier=spec, out=model)
        scored = evaluate(model, val_cache)
        reference = scored["metrics"]["accuracy"]  # without val/'s copies of training photos, which evaluate leaves out
        copies = set(scored["training_images"]["left_out"])
        for precision in ("fp32", "int8"):
            started = time.perf_counter()
            written = export(model, str(work / f"flowers-{spec}-{precision}.onnx"), precision=precision)
            seconds = time.perf_counter() - started
            session = ort.InferenceSession(written.path, providers=["CPUExecutionProvider"])
            dataset = ImageDataset(files, bundle_prep(written.metadata))

            def decoded(i):
                return dataset[i][1].transpose(1, 2, 0)  # noqa: B023 (called in this iteration)

            x = np.stack([decoded(i) for i in range(len(files))])  # decode excluded: pixels ready
            session.run(["label"], {"images": x[: args.batch]})  # warm-up
            t = time.perf_counter()
            predicted = np.concatenate(
                [session.run(["label"], {"images": x[s : s + args.batch]})[0] for s in range(0, len(x), args.batch)]
            )
            excluded = len(x) / (time.perf_counter() - t)
            t = time.perf_counter()
            for s in range(0, len(files), args.batch):
                batch = np.stack([decoded(i) for i in range(s, min(len(files), s + args.batch))])
                session.run(["label"], {"images": batch})
            included = len(files) / (time.perf_counter() - t)
            classes = written.metadata["classes"]
            kept = [i for i, item in enumerate(i for i in listing.items if not i.error) if item.path not in copies]
            accuracy = float(np.mean([classes[predicted[i]] == labels[i] for i in kept]))  # evaluate's rows
            a = written.accuracy or {}
            rows.append(
                (
                    spec,
                    precision,
                    written.head,
                    written.bytes / 1e6,
                    excluded,
                    included,
                    accuracy,
                    reference,
                    a.get("fp32"),
                    a.get("int8"),
                    a.get("agreement"),
                    seconds,
                )
            )
            print(rows[-1], flush=True)

    print(
        "\n| model | precision | head | file MB | images/s (decode excluded) | images/s (decode included) | "
        "val accuracy % (ONNX) | val accuracy % (`evaluate`) | train images: fp32 / int8 % (agreement) | export s |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for spec, precision, head, mb, exc, inc, acc, ref, f, q, agree, secs in rows:
        train_cell = f"{100 * f:.2f} / {100 * q:.2f} ({100 * agree:.1f})" if f is not None else "–"
        print(
            f"| {spec} | {precision} | {head} | {mb:.1f} | {exc:.1f} | {inc:.1f} | {100 * acc:.2f} | {100 * ref:.2f} "
            f"| {train_cell} | {secs:.0f} |"
        )


def bundle_prep(meta: dict):
    from embedder.kernel.preprocess import Preprocessing

    p = meta["preprocessing"]
    return Preprocessing(p["resize"], p["crop"], tuple(p["mean"]), tuple(p["std"]), p["interpolation"], p["draft"])


if __name__ == "__main__":
    main()
