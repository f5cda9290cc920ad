"""benchmarks/gpu.py, the script a lent GPU runs, run here in its --tiny mode on the CPU (its table must hold the
expected rows with values that make sense), and the GPU code paths that can be checked without a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from embedder.backbones.features import tf32_off
from embedder.inputs import batches as batches_module
from embedder.inputs.batches import Batch, default_workers

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
TRACKED = ROOT / "benchmarks" / "RESULTS.md"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    before = TRACKED.read_bytes() if TRACKED.exists() else None
    # one math thread: a busy shared CI machine makes two spin-waiting threads many times slower than one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--results",
            str(tmp / "RESULTS.md"),
            "--out",
            str(tmp / "out"),
            "--work",
            str(tmp / "work"),
            "--assets",
            str(tmp / "no-assets"),
            "--budget",
            "900",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = TRACKED.read_bytes() if TRACKED.exists() else None
    data = json.loads((tmp / "out" / "gpu_results.json").read_text())
    rows = {r["key"]: r for s in data["sections"] for r in s["rows"]}
    return {
        "data": data,
        "rows": rows,
        "sections": {s["name"]: s for s in data["sections"]},
        "markdown": (tmp / "RESULTS.md").read_text(),
        "tracked_unchanged": before == after,
        "tmp": tmp,
        "stdout": done.stdout,
    }


@pytest.mark.integration
def test_tiny_runs_every_section_it_can_and_skips_the_cuda_ones_with_the_reason(tiny):
    sections = tiny["sections"]
    assert list(sections) == [name for name, *_ in load_script().SECTIONS]
    ran = [n for n, s in sections.items() if s["status"] == "ok"]
    assert ran == [
        "env",
        "synth",
        "vectors",
        "model",
        "decode",
        "nvjpeg",
        "extract",
        "devices",
        "finetune",
        "compile",
        "probe",
    ], {n: (s["status"], s["error"]) for n, s in sections.items()}
    assert sections["oom"]["status"] == "skipped" and "needs CUDA" in sections["oom"]["error"]
    assert sections["tests"]["status"] == "skipped" and "--tiny" in sections["tests"]["error"]
    assert tiny["rows"]["cuda"]["value"] is False and tiny["data"]["mode"] == "tiny"


@pytest.mark.integration
def test_tiny_writes_only_where_it_is_told(tiny):
    assert tiny["tracked_unchanged"]  # benchmarks/RESULTS.md is not touched
    md = tiny["markdown"]
    assert md.startswith("<!-- gpu.py --tiny: begin -->") and md.rstrip().endswith("<!-- gpu.py --tiny: end -->")
    assert f"Machine: **{tiny['data']['machine']}**" in md
    for key in ("vectors.mobilenet_v2.fp32.max_rel", "extract.resnet18.imagenet.rows", "devices.auto"):
        assert f"| {key} |" in md
    assert (tiny["tmp"] / "out" / "gpu_results.md").read_text() == md
    assert "===== vectors: ok" in (tiny["tmp"] / "out" / "gpu_log.txt").read_text()


@pytest.mark.integration
def test_tiny_vectors_fp32_cpu_against_cpu_is_exact_and_bf16_is_close(tiny):
    rows = tiny["rows"]
    assert rows["vectors.mobilenet_v2.fp32.rows"]["value"] == 16
    assert rows["vectors.mobilenet_v2.fp32.max_abs"]["value"] == 0.0
    assert rows["vectors.mobilenet_v2.fp32.max_rel"]["check"] is True
    cosine = rows["vectors.mobilenet_v2.bf16.cosine_min"]
    assert 0.9 < cosine["value"] <= 1.0 + 1e-6 and cosine["check"] == (cosine["value"] >= 0.999)
    assert rows["vectors.mobilenet_v2.fp16.cosine_min"]["value"] == "skipped"
    assert "GPU" in rows["vectors.mobilenet_v2.fp16.cosine_min"]["note"]
    assert rows["vectors.mobilenet_v2.own_caches"]["value"] is True  # fp32 and bf16: other cache names
    assert rows["vectors.mobilenet_v2.fp32.same_cache_name"]["value"] is True


@pytest.mark.integration
def test_tiny_extract_has_a_row_per_image_and_rates_that_make_sense(tiny):
    rows = tiny["rows"]
    assert rows["synth.imagenet.images"]["value"] == 48
    assert len(list((tiny["tmp"] / "work" / "imagenet").glob("*/*.jpg"))) == 48
    assert rows["extract.resnet18.imagenet.rows"]["value"] == 48 and rows["extract.resnet18.imagenet.rows"]["check"]
    loop, whole = rows["extract.resnet18.imagenet"]["value"], rows["extract.resnet18.imagenet.process"]["value"]
    assert 0 < whole < loop  # the whole process also imports and loads
    assert rows["model.resnet18"]["value"] > 0 and rows["decode.imagenet.default"]["value"] > 0
    assert rows["nvjpeg.imagenet.decode"]["value"] > 0 and 0 <= rows["nvjpeg.pixels_vs_pillow"]["value"] < 20
    assert rows["compile.resnet18.first_call"]["value"] > 0


@pytest.mark.integration
def test_tiny_devices_finetune_and_verdict(tiny):
    rows, data = tiny["rows"], tiny["data"]
    assert rows["devices.cpu"]["value"] == "cpu" and rows["devices.auto"]["value"] == "cpu"
    missing = rows["devices.cuda:0"]  # no GPU here: a clear one-line error, not a traceback
    assert missing["value"] == "exit 1" and missing["check"] is True and "no CUDA GPU" in missing["note"]
    fp32, bf16 = rows["finetune.cpu.fp32.accuracy"]["value"], rows["finetune.cpu.bf16.accuracy"]["value"]
    assert 0 <= fp32 <= 100 and 0 <= bf16 <= 100
    assert rows["finetune.difference"]["value"] == pytest.approx(bf16 - fp32, abs=0.02)
    verdict = {r["what"].split(" (")[0]: r for r in data["verdict"]}
    assert verdict["resnet18: the limit"]["value"] in ("model", "decoding")
    checks = [r for r in rows.values() if r["check"] is not None]
    assert verdict["checks met"]["value"] == f"{sum(r['check'] for r in checks)} of {len(checks)}"


def test_record_merges_a_rerun_into_the_results_file(tmp_path):
    gpu = load_script()

    def section(name, status, value):
        return {
            "name": name,
            "status": status,
            "seconds": 1.0,
            "error": "",
            "rows": [{"key": f"{name}.x", "value": value, "unit": "", "note": "", "check": None}],
        }

    first = {
        "mode": "full",
        "machine": "NVIDIA H200",
        "host": "16 cores",
        "date": "2026-12-01 10:00 UTC",
        "budget": 450,
        "seconds": 400.0,
        "data": "",
        "models": ["resnet50"],
        "sections": [section("env", "ok", 1), section("vectors", "failed", 2), section("oom", "ok", 3)],
    }
    second = {
        **first,
        "date": "2026-12-01 10:20 UTC",
        "seconds": 50.0,
        "sections": [section("env", "ok", 1), section("vectors", "ok", 20), section("oom", "skipped", 0)],
    }
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(second))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nearlier sections\n")
    merged = gpu.record([str(tmp_path / "a.json"), str(tmp_path / "b.json")], results)
    got = {s["name"]: s["rows"][0]["value"] for s in merged["sections"]}
    assert got == {"env": 1, "vectors": 20, "oom": 3}  # a rerun replaces, a skipped section does not
    text = results.read_text()
    assert text.startswith("# Results\n\nearlier sections\n\n<!-- gpu.py: begin -->")
    assert "Machine: **NVIDIA H200**" in text and "sections rerun 2026-12-01 10:20 UTC: env, vectors" in text
    gpu.record([str(tmp_path / "b.json")], results)  # recording again replaces the section, never appends another
    assert results.read_text().count("<!-- gpu.py: begin -->") == 1


def test_decoding_workers_fill_the_cores_on_a_gpu(monkeypatch):
    monkeypatch.setattr(batches_module, "cpu_cores", lambda: 16)
    assert default_workers("cuda") == 15  # was capped at 8
    assert default_workers("cpu") == 0  # the CPU keeps decoding threads
    monkeypatch.setattr(batches_module, "cpu_cores", lambda: 1)
    assert default_workers("cuda") == 1


def _tf32_state():
    b = torch.backends
    if hasattr(getattr(b.cudnn, "conv", None), "fp32_precision"):
        return b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision
    return b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32


def test_tf32_is_off_only_inside_fp32_on_cuda_and_restored_after():
    before = _tf32_state()
    ieee = ("ieee", "ieee") if isinstance(before[0], str) else (False, False)
    with tf32_off(torch.device("cuda"), "fp32"):  # only flags: no GPU is touched
        assert _tf32_state() == ieee
    assert _tf32_state() == before
    for device, precision in ((torch.device("cpu"), "fp32"), (torch.device("cuda"), "bf16")):
        with tf32_off(device, precision):
            assert _tf32_state() == before
    with pytest.raises(RuntimeError), tf32_off(torch.device("cuda:0"), "fp32"):
        raise RuntimeError("a failing batch")
    assert _tf32_state() == before  # restored on the way out of an error too


def test_a_batch_pins_its_images_as_one_tensor(monkeypatch):
    pinned = []

    def fake_pin(self):  # pinning needs a GPU: record the call and hand the tensor back
        pinned.append(self)
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    batch = Batch([0, 2], images, ["d0", "d2"], [(1, "corrupt", "d1")])
    out = batch.pin_memory()
    assert len(pinned) == 1 and out.images is pinned[0] and out.images.dtype == torch.uint8
    assert np.array_equal(out.images.numpy(), images)
    assert (out.indices, out.digests, out.failures) == ([0, 2], ["d0", "d2"], [(1, "corrupt", "d1")])
