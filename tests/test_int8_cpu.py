"""int8 that knows its CPU: the instruction sets recorded and read back, schemes as settings, the cosine guard that
falls back to a safer scheme or to fp32 (and --force-int8 that keeps int8), a cache extended on another CPU."""

from __future__ import annotations

import json
import pathlib

import pytest
from helpers import FAST, photo, write_tree

import embedder
import embedder.engines.cpu
import embedder.engines.quantize
from embedder.cache.hdf5 import CacheReader
from embedder.engines.cpu import CpuInfo, parse_cpuinfo, same_kind
from embedder.kernel.settings import ExtractionSettings, Int8

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n\nprocessor\t: 1\n"
XEON = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512bw avx512_vnni amx_int8 amx_tile\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd aes asimddp i8mm\nCPU implementer\t: 0x41\n"
VNNI_CPU = CpuInfo("Some Xeon", 2, "x86_64", ("avx2", "avx512f", "avx512bw", "avx512_vnni"))
TINY = dict(FAST, batch_size=8)


def test_the_instruction_sets_that_matter_are_read_from_cpuinfo():
    epyc, xeon, arm = (parse_cpuinfo(t, a, 2) for t, a in ((EPYC, "x86_64"), (XEON, "x86_64"), (GRAVITON, "aarch64")))
    assert (epyc.model, epyc.flags, epyc.int8_kind) == ("AMD EPYC 7B13", ("avx2",), "avx2")
    assert xeon.flags == ("avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8") and xeon.int8_kind == "vnni"
    assert arm.flags == ("asimddp", "i8mm") and arm.int8_kind == "arm-dot"
    assert parse_cpuinfo("model name: X\n", "x86_64", 1).int8_kind == "unknown"  # no flags line: not guessed
    assert CpuInfo.from_dict(json.loads(json.dumps(xeon.to_dict()))) == xeon
    assert epyc.describe() == "AMD EPYC 7B13, 2 cores, x86_64: avx2 (int8 kind avx2)"
    assert same_kind(epyc.to_dict(), parse_cpuinfo(EPYC, "x86_64", 64)) and not same_kind(epyc.to_dict(), xeon)
    assert same_kind(None, xeon)  # an older cache recorded no CPU: nothing to say


def test_each_kind_of_cpu_starts_its_own_ladder():
    ladder = embedder.engines.quantize.ladder
    assert ladder(parse_cpuinfo(XEON, "x86_64", 2))[0] == ("u8s8", 0)
    assert ladder(parse_cpuinfo(EPYC, "x86_64", 2))[0] == ("u8s8-reduce", 0)  # U8S8 saturates without VNNI
    for cpu in (parse_cpuinfo(t, "x86_64", 2) for t in (EPYC, XEON)):
        assert ladder(cpu)[-1] == ("u8s8-reduce", embedder.engines.quantize.WORST_LAYERS)  # the safest rung last


def test_schemes_are_settings_and_older_int8_settings_keep_their_key(tmp_path, monkeypatch):
    old = {"images": 256, "seed": 0, "method": "minmax", "calibration_set": "abc", "fp32_tail": True}
    assert Int8.from_dict(old).scheme == "u8s8" and Int8.from_dict(old).to_dict() == old  # the key of before
    reduce = Int8.from_dict({**old, "scheme": "u8s8-reduce", "fp32_layers": 4})
    assert reduce.to_dict() == {**old, "scheme": "u8s8-reduce", "fp32_layers": 4}
    assert reduce.name == "u8s8-reduce + 4 layers fp32"
    with pytest.raises(embedder.kernel.errors.FeaturebankError, match="unknown int8 scheme 'u8s9'"):
        Int8(scheme="u8s9")
    # extracted with two schemes: two caches (default paths), two settings keys, each scheme recorded
    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    opts = dict(precision="int8", cache_dir=str(tmp_path / "caches"), **TINY)
    a = embedder.extract(str(root), int8=Int8(images=6, scheme="u8s8"), **opts)
    b = embedder.extract(str(root), int8=Int8(images=6, scheme="u8s8-reduce"), **opts)
    sa, sb = (ExtractionSettings.from_dict(s.settings) for s in (a, b))
    assert (sa.int8.scheme, sb.int8.scheme) == ("u8s8", "u8s8-reduce") and "scheme" not in a.settings["int8"]
    assert a.cache != b.cache and sa.key != sb.key
    assert CacheReader(b.cache).info["int8"]["scheme"] == "u8s8-reduce"


@pytest.mark.integration  # 3-4 s of int8 calibration; the fast tier keeps the scheme and fallback tests
def test_the_cpu_is_recorded_with_each_run_and_the_int8_engine_and_info_shows_it(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli

    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    here = embedder.engines.cpu.current_cpu()
    q = embedder.extract(str(root), str(tmp_path / "q.h5"), precision="int8", int8=Int8(images=6), **TINY)
    info = CacheReader(q.cache).info
    assert info["runs"][-1]["engine"]["cpu"] == here.to_dict() == info["int8"]["cpu"]
    scheme = ExtractionSettings.from_dict(q.settings).int8
    assert (scheme.scheme, scheme.fp32_layers) in embedder.engines.quantize.ladder(here)  # a rung of this CPU's ladder
    assert info["int8"]["choice"]["tried"][-1]["scheme"] == scheme.name
    out = CliRunner().invoke(cli.main, ["info", q.cache]).output
    assert f"  cpu          {here.describe()}\n" in out
    assert f"  int8         calibrated on {here.describe()}" in out


def _pretend(monkeypatch, cosines: dict, ladder=(("u8s8", 0), ("u8s8-reduce", 0))):
    """Builds as usual, but with the (mean, worst) cosine of the named schemes replaced (as if they had lost that
    much)."""
    real = embedder.engines.quantize.build_int8

    def build(fp32, settings, store, name, calibration, open_int8, ranges=None):
        meta = real(fp32, settings, store, name, calibration, open_int8, ranges)
        if settings.int8.scheme in cosines:  # in the sidecar too, where a later run finds the engine
            mean, worst = cosines[settings.int8.scheme]
            meta["cosine_to_fp32"] = {k: {**v, "mean": mean, "min": worst} for k, v in meta["cosine_to_fp32"].items()}
            store.update_meta(name, cosine_to_fp32=meta["cosine_to_fp32"])
        return meta

    monkeypatch.setattr(embedder.engines.quantize, "build_int8", build)
    monkeypatch.setattr(embedder.engines.quantize, "ladder", lambda cpu=None: ladder)


def test_the_guard_checks_the_mean_and_the_worst_image():
    q = embedder.engines.quantize
    assert (q.COSINE_BOUND, q.WORST_BOUND, q.MIN_SPEEDUP) == (0.98, 0.95, 1.3)
    layer = {"mean": 0.99, "min": 0.96, "images": 256}
    assert q.holds({"a": layer})
    assert not q.holds({"a": {**layer, "min": 0.9265}})  # u8s8-reduce on hymenoptera, AVX2: a good mean, one bad image
    assert not q.holds({"a": {**layer, "mean": 0.9755}})  # u8s8-reduce on flowers, AVX2
    assert not q.holds({"a": layer, "b": {**layer, "min": 0.5}})  # every extracted layer must hold
    assert (q.mean_cosine({"a": layer, "b": {**layer, "mean": 0.97}}), q.worst_cosine({"a": layer})) == (0.97, 0.96)


def test_a_low_cosine_falls_back_to_the_next_scheme_and_says_so(tmp_path, monkeypatch, capsys):
    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    _pretend(monkeypatch, {"u8s8": (0.99, 0.9), "u8s8-reduce": (0.995, 0.99)})  # u8s8: one image lost
    q = embedder.extract(str(root), str(tmp_path / "q.h5"), precision="int8", int8=Int8(images=6), **TINY)
    assert ExtractionSettings.from_dict(q.settings).int8.scheme == "u8s8-reduce"
    said = "int8 fell back to u8s8-reduce on this CPU"
    assert any(
        n.startswith(said)
        and "(mean / worst) u8s8 0.9900 / 0.9000, u8s8-reduce 0.9950 / 0.9900 (bound: mean 0.98, worst 0.95)" in n
        for n in q.notes
    )
    assert f"featurebank: {said}" in capsys.readouterr().err
    # the decision is recorded: another cache of the same input decides alike, calibrating nothing
    again = embedder.extract(str(root), str(tmp_path / "r.h5"), precision="int8", int8=Int8(images=6), **TINY)
    assert again.settings == q.settings and not any("calibrated" in p for p in again.prepared)


@pytest.mark.integration  # a calibration and two extractions; the guard's rule itself is tested fast above
def test_one_bad_image_sends_int8_to_fp32_and_the_cache_records_why(tmp_path, monkeypatch):
    from embedder.cache.describe import cache_text, describe_cache

    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    _pretend(monkeypatch, {"u8s8-reduce": (0.9843, 0.9265)}, ladder=(("u8s8-reduce", 0),))  # hymenoptera, AVX2
    q = embedder.extract(str(root), str(tmp_path / "q.h5"), precision="int8", int8=Int8(images=6), **TINY)
    assert q.settings["precision"] == "fp32" and q.rows == 6
    kind = embedder.engines.cpu.current_cpu().int8_kind
    assert q.notes == [
        f"int8 would cost accuracy on this CPU ({kind}): cosine to fp32 on the 6 calibration images (mean / worst) "
        "u8s8-reduce 0.9843 / 0.9265, none within the bound (mean 0.98, worst 0.95); using fp32 (--force-int8 keeps int8)"
    ]
    refused = CacheReader(q.cache).info["int8_refused"]
    assert refused["note"] == q.notes[0] and refused["tried"] == [
        {"scheme": "u8s8-reduce", "cosine": 0.9843, "worst": 0.9265}
    ]
    assert refused["cpu"] == embedder.engines.cpu.current_cpu().to_dict()
    assert f"  int8         not used: {q.notes[0]}" in cache_text(describe_cache(q.cache))
    # --force-int8 keeps int8: the scheme that was measured, its own cache
    forced = embedder.extract(
        str(root), str(tmp_path / "f.h5"), precision="int8", int8=Int8(images=6), force_int8=True, **TINY
    )
    assert ExtractionSettings.from_dict(forced.settings).int8.scheme == "u8s8-reduce"
    assert forced.notes[0].startswith("int8 u8s8-reduce kept (--force-int8) although its cosine to fp32")
    assert "int8_refused" not in CacheReader(forced.cache).info


@pytest.mark.integration  # every int8 scheme calibrated in turn
def test_when_no_scheme_reaches_the_bound_fp32_is_used_unless_forced(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli

    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    _pretend(monkeypatch, {"u8s8": (0.9, 0.8), "u8s8-reduce": (0.95, 0.9)})  # both under the bound
    args = ["extract", str(root), "-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64"]
    args += ["--workers", "0", "--precision", "int8", "--calibration-images", "6"]
    r = CliRunner().invoke(cli.main, [*args, "--cache", str(tmp_path / "q.h5"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["settings"]["precision"] == "fp32" and out["rows"] == 6  # fp32 rows, said in one line
    assert r.stderr == f"featurebank: {out['notes'][0]}\n"
    assert out["notes"] == [
        "int8 would cost accuracy on this CPU ("
        + embedder.engines.cpu.current_cpu().int8_kind
        + "): cosine to fp32 on the 6 calibration images (mean / worst) u8s8 0.9000 / 0.8000, u8s8-reduce "
        "0.9500 / 0.9000, none within the bound (mean 0.98, worst 0.95); using fp32 (--force-int8 keeps int8)"
    ]
    info = CliRunner().invoke(cli.main, ["info", out["cache"]]).output
    assert f"  int8         not used: {out['notes'][0]}\n" in info
    r = CliRunner().invoke(cli.main, [*args, "--cache", str(tmp_path / "f.h5"), "--force-int8", "--json"])
    assert r.exit_code == 0, r.output
    forced = json.loads(r.stdout)
    assert forced["settings"]["precision"] == "int8" and forced["settings"]["int8"]["scheme"] == "u8s8-reduce"
    assert forced["notes"][0].startswith(
        "int8 u8s8-reduce kept (--force-int8) although its cosine to fp32 on the 6 calibration images (mean / worst) "
        "is 0.9500 / 0.9000, under the bound (mean 0.98, worst 0.95)"
    )


def test_int8_options_on_an_fp32_run_are_refused_not_ignored():
    """--force-int8 and --int8-scheme without --precision int8 had been accepted and the run made fp32 rows."""
    from embedder.kernel.errors import InvalidValue
    from embedder.options import ExtractOptions

    with pytest.raises(InvalidValue, match="^--force-int8 goes with --precision int8$"):
        ExtractOptions(force_int8=True)
    with pytest.raises(InvalidValue, match="^--calibration-from and --int8-scheme u8u8 go with --precision int8$"):
        ExtractOptions(calibration_from="c.h5", int8_scheme="u8u8")
    assert ExtractOptions(precision="int8", force_int8=True, int8_scheme="u8u8").force_int8


@pytest.mark.integration  # three calibrations and four extractions
def test_a_named_scheme_under_the_bound_is_said_and_a_refused_calibration_is_followed(tmp_path, monkeypatch):
    """A scheme named with --int8-scheme is built as asked, with a note when it misses the bound (it had printed
    none); --calibration-from a cache where int8 was refused embeds fp32 rows too, saying why (it had been an
    error); --calibration-from a cache of another network names the network, not a missing engine file."""
    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    _pretend(monkeypatch, {"u8s8": (0.9354, 0.5770), "u8s8-reduce": (0.9843, 0.9265)}, ladder=(("u8s8-reduce", 0),))
    named = embedder.extract(
        str(root), str(tmp_path / "n.h5"), precision="int8", int8=Int8(images=6, scheme="u8s8"), **TINY
    )
    assert ExtractionSettings.from_dict(named.settings).int8.scheme == "u8s8"
    assert named.notes[0].startswith(
        "int8 u8s8 kept (asked by name) although its cosine to fp32 on the 6 calibration images (mean / worst) is "
        "0.9354 / 0.5770, under the bound"
    )
    train = embedder.extract(str(root), str(tmp_path / "t.h5"), precision="int8", int8=Int8(images=6), **TINY)
    assert train.settings["precision"] == "fp32"  # refused: the guard's fp32
    val = embedder.extract(
        str(root), str(tmp_path / "v.h5"), precision="int8", calibration_from=str(tmp_path / "t.h5"), **TINY
    )
    assert val.settings["precision"] == "fp32" and val.notes == [
        f"--calibration-from {tmp_path / 't.h5'}: int8 was refused there (its CPU's check) and its rows are fp32, "
        "so these are fp32 too, from the same engine (--force-int8 on both keeps int8)"
    ]
    with pytest.raises(embedder.kernel.errors.IncompatibleSettings, match="was embedded with resnet18, not alexnet"):
        embedder.extract(
            str(root), str(tmp_path / "a.h5"), precision="int8", calibration_from=str(tmp_path / "n.h5"),
            **{**TINY, "backbone": "alexnet"},
        )  # fmt: skip


def test_an_int8_cache_extended_on_another_kind_of_cpu_says_so(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    first = embedder.extract(str(root), str(tmp_path / "q.h5"), precision="int8", int8=Int8(images=6), **TINY)
    made = embedder.engines.cpu.current_cpu()
    photo(700).save(root / "cats" / "new.jpg")
    other = VNNI_CPU if made.int8_kind != "vnni" else CpuInfo("Some EPYC", 2, "x86_64", ("avx2",))
    monkeypatch.setattr(embedder.engines.cpu, "current_cpu", lambda: other)
    again = embedder.extract(str(root), str(tmp_path / "q.h5"), precision="int8", int8=Int8(images=6), **TINY)
    assert again.embedded == 1 and again.settings == first.settings  # the cache's scheme kept: one kind of rows
    assert len(again.notes) == 1 and again.notes[0].startswith(
        f"this int8 cache was made on another kind of CPU ({made.model}, int8 kind {made.int8_kind}) than this one "
        f"({other.model}, {other.int8_kind})"
    )
    runs = CacheReader(again.cache).info["runs"]
    assert [r["engine"]["cpu"]["int8_kind"] for r in runs] == [made.int8_kind, other.int8_kind]
    monkeypatch.setattr(embedder.engines.cpu, "current_cpu", lambda: made)
    photo(701).save(root / "cats" / "newer.jpg")
    back = embedder.extract(str(root), str(tmp_path / "q.h5"), precision="int8", int8=Int8(images=6), **TINY)
    assert back.notes == []  # made here: nothing to say


@pytest.mark.integration  # 3-4 s of int8 calibration; the fast tier keeps the scheme and fallback tests
def test_the_worst_layers_are_kept_in_fp32(tmp_path, monkeypatch):
    import onnx

    root = tmp_path / "images"
    write_tree(root, per_class=2)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    q = embedder.extract(
        str(root),
        str(tmp_path / "q.h5"),
        precision="int8",
        int8=Int8(images=6, scheme="u8s8-reduce", fp32_layers=2),
        **TINY,
    )
    model = str(tmp_path / "engines" / q.engine["model"])
    meta = json.loads(pathlib.Path(model[: -len(".onnx")] + ".json").read_text())
    assert meta["scheme"] == "u8s8-reduce + 2 layers fp32" and len(meta["fp32_nodes"]) == 2
    graph = onnx.load(model).graph
    made_by = {o: n for n in graph.node for o in n.output}
    for node in (n for n in graph.node if n.name in meta["fp32_nodes"]):
        assert node.op_type == "Conv"
        weight = made_by.get(node.input[1])
        assert weight is None or weight.op_type != "DequantizeLinear"  # float weights: not quantized
    quantized = [n for n in graph.node if n.op_type == "Conv" and made_by.get(n.input[1]) is not None]
    assert quantized  # the others are int8
