"""int8 variants on the CPU at hand, pixels decoded once: more convolutions kept in fp32 (chosen per node by the
calibration cosine, or every depthwise one), other calibrations; cosine to fp32 (calibration images and val/), the
linear probe's accuracy on val/, ORT images/s against fp32 in the same run.

    python benchmarks/int8_variants.py --dataset flowers --variants u8s8-reduce,u8s8-reduce+16,u8s8-reduce+dw

A variant is SCHEME[+N][+dw][+convs][:percentile|:entropy]: N the convolutions that lose most kept in fp32 (as
``embedder.engines.quantize.worst_layers`` ranks them), dw every depthwise convolution in fp32, convs
only convolutions quantized (residual additions in fp32). The fp32 graph is
the one featurebank exports (``--fp32``, or exported here); quantize_static's arguments are the product's
(``embedder.engines.quantize.build_int8``: QDQ, uint8 activations, each output's tail in fp32), calibrated on the
product's draw of 256 train images. The probe is ``logreg:C=0.1`` fit on train/, scored once on val/. Images/s: ONNX
Runtime alone on 32 calibration images, fp32 and every variant interleaved, best of 3 (compare ratios within one run).
Prints a table; figures go to RESULTS.md by hand (the int8 section says which run gave them).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def decode(folder: pathlib.Path):
    from embedder.inputs.batches import ImageDataset, ThreadBatches
    from embedder.inputs.sources import list_images
    from embedder.kernel.preprocess import Preprocessing

    listing = list_images(str(folder))
    items = [i for i in listing.items if not i.error]
    paths = [listing.full_path(i) for i in items]
    images, labels, keys = [], [], []
    for batch in ThreadBatches(ImageDataset(paths, Preprocessing()), 64):
        images.append(batch.images)
        labels += [items[i].label for i in batch.indices]
        keys += [(paths[i], items[i].path) for i in batch.indices]
    return np.concatenate(images), np.array(labels), keys


def session(path: str):
    import onnxruntime as ort

    from embedder.engines.cpu import cpu_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = cpu_cores(), 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def embed(sess, images: np.ndarray, batch: int = 32) -> np.ndarray:
    name = sess.get_outputs()[0].name
    return np.concatenate(
        [sess.run([name], {"images": images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def probe(Xtr, ytr, Xva, yva):
    from classifiers import make_classifier

    pred = make_classifier("logreg:C=0.1").fit(Xtr, ytr).predict(Xva)
    return 100 * float(np.mean(pred == yva)), pred


def depthwise(path: str) -> list[str]:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return [
        n.name for n in graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="flowers")
    parser.add_argument("--variants", default="u8s8-reduce,u8s8-reduce+16,u8s8-reduce+24,u8s8-reduce+dw")
    parser.add_argument("--fp32", default="", help="the fp32 ONNX file featurebank exported (default: export it)")
    parser.add_argument("--shared", default=str(SHARED))
    opts = parser.parse_args()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from embedder.engines.cpu import current_cpu
    from embedder.engines.quantize import SCHEMES, _quiet, draw_calibration, tail_nodes, worst_layers
    from embedder.kernel.settings import Int8

    data = pathlib.Path(opts.shared) / "data" / opts.dataset
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    print(f"CPU: {current_cpu().describe()}; load average at the start{load}; {time.strftime('%Y-%m-%d %H:%M')}")
    t = time.perf_counter()
    Xtr_img, ytr, keys = decode(data / "train")
    Xva_img, yva, _ = decode(data / "val")
    print(f"decoded {len(Xtr_img)} train + {len(Xva_img)} val in {time.perf_counter() - t:.0f} s", flush=True)
    index = {p: i for i, (p, _) in enumerate(keys)}
    calib_idx = [index[p] for p in draw_calibration(keys, Int8())[:256]]
    calib = Xtr_img[calib_idx]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = opts.fp32
        if not fp32:
            import embedder

            weights = pathlib.Path(opts.shared) / "weights" / "mobilenet_v2-imagenet.pth"
            s = embedder.extract(
                str(data / "val"),
                f"{tmp}/val.h5",
                backbone="mobilenet_v2",
                weights=str(weights),
                progress=False,
                engine="onnxruntime",
                engine_dir=f"{tmp}/engines",
            )
            fp32 = os.path.join(tmp, "engines", s.engine["model"])
        pre = f"{tmp}/pre.onnx"
        with _quiet():
            quant_pre_process(fp32, pre, skip_symbolic_shape=False)
        keep = tail_nodes(pre)
        dw = depthwise(pre)
        f_sess = session(fp32)
        t = time.perf_counter()
        F_tr, F_va, F_cal = embed(f_sess, Xtr_img), embed(f_sess, Xva_img), None
        F_cal = F_tr[calib_idx]
        base, base_pred = probe(F_tr, ytr, F_va, yva)
        print(f"fp32 embedded in {time.perf_counter() - t:.0f} s; probe {base:.2f} on val/", flush=True)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = (calib[i : i + 1] for i in range(len(calib)))

            def get_next(self):
                x = next(self._it, None)
                return None if x is None else {"images": x}

        methods = {
            "minmax": (CalibrationMethod.MinMax, {}),
            "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.999}),
            "entropy": (CalibrationMethod.Entropy, {}),
        }
        ranking: dict[str, list[str]] = {}

        def quantize(scheme: str, method: str, out: str, exclude: list[str], ops=None) -> float:
            sch = SCHEMES[scheme]
            calmethod, extra = methods[method]
            t = time.perf_counter()
            with _quiet():
                quantize_static(
                    pre,
                    out,
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=sch["per_channel"],
                    reduce_range=sch["reduce_range"],
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8 if sch["weights"] == "int8" else QuantType.QUInt8,
                    calibrate_method=calmethod,
                    nodes_to_exclude=exclude,
                    op_types_to_quantize=ops,
                    calibration_cache_path=f"{tmp}/ranges-{method}",
                    extra_options=extra,
                )
            return time.perf_counter() - t

        results, sessions = {}, {"fp32": f_sess}
        for variant in opts.variants.split(","):
            spec, _, method = variant.partition(":")
            method = method or "minmax"
            parts = spec.split("+")
            scheme, n, with_dw, ops = parts[0], 0, False, None
            for p in parts[1:]:
                if p == "dw":
                    with_dw = True
                elif p == "convs":  # only convolutions quantized: residual additions stay fp32
                    ops = ["Conv", "Gemm", "MatMul"]
                else:
                    n = int(p)
            out = f"{tmp}/{variant}.onnx"
            try:
                seconds = 0.0
                exclude = list(keep) + (dw if with_dw else [])
                if n:
                    rank_key = f"{scheme}:{method}:{with_dw}:{ops}"
                    if rank_key not in ranking:
                        plain = f"{tmp}/plain.onnx"
                        seconds += quantize(scheme, method, plain, exclude, ops)
                        ranking[rank_key] = worst_layers(pre, plain, [calib], 10_000)
                    exclude += [x for x in ranking[rank_key] if x not in exclude][:n]
                seconds += quantize(scheme, method, out, exclude, ops)
            except Exception as exc:
                print(f"{variant}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
                continue
            sess = session(out)
            Q_tr, Q_va = embed(sess, Xtr_img), embed(sess, Xva_img)
            acc, pred = probe(Q_tr, ytr, Q_va, yva)
            cc, cv = cosines(F_cal, Q_tr[calib_idx]), cosines(F_va, Q_va)
            fp32_convs = len([x for x in exclude if x not in keep])
            results[variant] = (cc, cv, acc, int(np.sum(pred != base_pred)), seconds, fp32_convs)
            sessions[variant] = sess
            print(
                f"{variant}: cosine calib {cc.mean():.4f}/{cc.min():.4f} val {cv.mean():.4f}/{cv.min():.4f} "
                f"probe {acc:.2f} ({acc - base:+.2f}) changed {results[variant][3]} "
                f"(convs in fp32 besides the tail: {fp32_convs}; {seconds:.0f} s)",
                flush=True,
            )
        x = calib[:32]
        rates = dict.fromkeys(sessions, 0.0)
        name = f_sess.get_outputs()[0].name
        for s in sessions.values():
            s.run([name], {"images": x})
        for _ in range(3):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run([name], {"images": x})
                rates[k] = max(rates[k], len(x) / (time.perf_counter() - t))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    print(f"\nload average at the end{load}; {len(dw)} depthwise convolutions, tail kept: {len(keep)} nodes\n")
    print(
        "| data | variant | convs in fp32 (besides the tail) | cosine, calibration images (mean / worst) | "
        "cosine on val/ (mean / worst) | probe on val/ % (vs fp32) | val predictions changed | ORT images/s (vs fp32) |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    print(f"| {opts.dataset} | fp32 | all | 1 / 1 | 1 / 1 | {base:.2f} | – | {rates['fp32']:.1f} (1.00x) |")
    for k, (cc, cv, acc, changed, _s, nconv) in results.items():
        print(
            f"| {opts.dataset} | {k} | {nconv} | {cc.mean():.4f} / {cc.min():.4f} | {cv.mean():.4f} / {cv.min():.4f} | "
            f"{acc:.2f} ({acc - base:+.2f}) | {changed} | {rates[k]:.1f} ({rates[k] / rates['fp32']:.2f}x) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
