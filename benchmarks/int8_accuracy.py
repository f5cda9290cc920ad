"""fp32 against int8 with the real MobileNetV2 ImageNet weights, on hymenoptera and flowers: speed, feature
cosine and linear-probe accuracy on val/.

    python benchmarks/int8_accuracy.py [--datasets hymenoptera,flowers]

For each dataset: `featurebank extract train/` in fp32 and in int8 (calibrated on 256 train images), then val/ in
fp32 and with train's int8 engine (--calibration-from, so val images are never calibrated on). The linear probe is
the zoo's `logreg`, fit on train's rows, scored once on val's. Writes its table into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
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


def extract(folder, cache, precision, env, extra=()) -> tuple[dict, float]:
    from cpu_engines import run

    seconds, out = run(
        [
            sys.executable,
            "-m",
            "cli",
            "extract",
            str(folder),
            "-b",
            "mobilenet_v2",
            "-w",
            str(WEIGHTS),
            "--cache",
            str(cache),
            "--precision",
            precision,
            "--json",
            *extra,
        ],
        env,
    )
    return json.loads(out), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="hymenoptera,flowers")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    opts = parser.parse_args()
    if not WEIGHTS.exists():
        print(f"skipped: {WEIGHTS} is absent")
        return 0
    import embedder
    from classifiers import make_classifier
    from embedder.cache import CacheReader

    rows = [
        "| data | precision | extract train/ (images/s, whole process; one-time prep) | cosine to fp32 on val/ "
        "(mean / worst) | cosine on the calibration images (mean / worst) | linear probe on val/: accuracy % | "
        "balanced accuracy % |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        env = {**os.environ, "FEATUREBANK_ENGINE_DIR": str(tmp / "engines"), "PYTHONPATH": str(ROOT)}
        for name in opts.datasets.split(","):
            data = SHARED / "data" / name
            if not data.is_dir():
                print(f"skipped {name}: {data} is absent")
                continue
            results = {}
            for precision in ("fp32", "int8"):
                extract(data / "train", tmp / f"warm-{name}-{precision}.h5", precision, env)  # engine prepared
                train, seconds = extract(data / "train", tmp / f"{name}-train-{precision}.h5", precision, env)
                extra = ("--calibration-from", str(tmp / f"{name}-train-int8.h5")) if precision == "int8" else ()
                val, _ = extract(data / "val", tmp / f"{name}-val-{precision}.h5", precision, env, extra)
                Xtr, ytr, _ = embedder.load(train["cache"])
                Xva, yva, _ = embedder.load(val["cache"])
                pred = make_classifier("logreg").fit(Xtr, ytr).predict(Xva)
                classes = sorted(set(yva))
                recall = [np.mean(pred[yva == c] == c) for c in classes]
                warm = CacheReader(tmp / f"warm-{name}-{precision}.h5").info
                results[precision] = dict(
                    ips=train["embedded"] / seconds,
                    Xva=Xva,
                    acc=100 * np.mean(pred == yva),
                    bal=100 * np.mean(recall),
                    prep=warm["runs"][0]["prepared_seconds"],
                    calib=warm.get("int8", {}).get("cosine_to_fp32", {}),
                )
            # the same int8 with every layer quantized (no fp32 tail): what keeping the tail in fp32 buys
            from embedder.job import int8_of_cache
            from embedder.settings import Int8

            quantized = dict(
                backbone="mobilenet_v2",
                weights=str(WEIGHTS),
                precision="int8",
                engine_dir=env["FEATUREBANK_ENGINE_DIR"],
            )
            t = embedder.extract(
                str(data / "train"), str(tmp / f"{name}-train-all.h5"), int8=Int8(fp32_tail=False), **quantized
            )
            wanted, folder = int8_of_cache(t.cache)
            v = embedder.extract(
                str(data / "val"), str(tmp / f"{name}-val-all.h5"), int8=wanted, **{**quantized, "engine_dir": folder}
            )
            Xtr, ytr, _ = embedder.load(t.cache)
            Xva, yva, _ = embedder.load(v.cache)
            pred = make_classifier("logreg").fit(Xtr, ytr).predict(Xva)
            results["all"] = dict(
                Xva=Xva,
                acc=100 * np.mean(pred == yva),
                bal=100 * np.mean([np.mean(pred[yva == c] == c) for c in sorted(set(yva))]),
            )
            fp32, int8 = results["fp32"], results["int8"]
            a, b = fp32["Xva"], int8["Xva"]
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            calib = next(iter(int8["calib"].values()))
            rows.append(
                f"| {name} | fp32 | {fp32['ips']:.0f} ({fp32['prep']:.1f} s) | 1 | 1 | {fp32['acc']:.2f} | "
                f"{fp32['bal']:.2f} |"
            )
            rows.append(
                f"| {name} | int8 | {int8['ips']:.0f} ({int8['prep']:.1f} s) | {cos.mean():.4f} / "
                f"{cos.min():.4f} | {calib['mean']:.4f} / {calib['min']:.4f} | {int8['acc']:.2f} "
                f"({int8['acc'] - fp32['acc']:+.2f}) | {int8['bal']:.2f} |"
            )
            every = results["all"]
            c2 = (a * every["Xva"]).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(every["Xva"], axis=1)
            rows.append(
                f"| {name} | int8, every layer quantized | – | {c2.mean():.4f} / {c2.min():.4f} | – | "
                f"{every['acc']:.2f} ({every['acc'] - fp32['acc']:+.2f}) | {every['bal']:.2f} |"
            )
            print(*rows[-3:], sep="\n", flush=True)
    text = "\n".join(
        [
            f"MobileNetV2, `../shared/weights/mobilenet_v2-imagenet.pth`, {time.strftime('%Y-%m-%d')}, "
            f"{os.cpu_count()} cores. int8: ONNX Runtime static QDQ, per-channel int8 weights, uint8 "
            "activations, MinMax on 256 train images, the output's tail in fp32 (and, for comparison, every layer int8).",
            "",
            *rows,
        ]
    )
    print(text)
    from cpu_engines import write_section

    write_section(pathlib.Path(opts.results), text, "int8_accuracy.py", "int8 against fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
