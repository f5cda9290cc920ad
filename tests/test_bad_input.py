"""Bad input of every kind an adversarial pass tried (issue 18): a reason, never a hang, a traceback, a crash or a
file read whole; nothing already done is lost."""

from __future__ import annotations

import io
import os
import struct

import pytest
from helpers import FAST, ROOT, finishes, photo, write_tree
from PIL import Image

import embedder
from embedder.cache.hdf5 import CacheReader
from embedder.inputs import decode
from embedder.inputs.decode import NotReadable, decode_bytes, decode_file, file_digest, max_file_bytes
from embedder.inputs.sources import list_images
from embedder.kernel.errors import FeaturebankError

TORCH = dict(FAST, engine="torch")  # no ONNX export, no engine timing: the fastest honest extract


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose EXIF block says 5 tags and holds one: Pillow warns "Corrupt EXIF data"; the pixels are fine."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 5) + struct.pack("<HHII", 0x0112, 3, 1, 6)
    out = io.BytesIO()
    photo(5, (64, 64)).save(out, "JPEG", exif=b"Exif\x00\x00" + tiff)
    return out.getvalue()


# -- only regular files are read, and reads are bounded ------------------------------------------------------
def test_a_fifo_named_like_an_image_is_a_bad_file_and_nothing_waits_for_it(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    assert finishes(lambda: decode_file(str(fifo))).reason == "not a regular file (a FIFO): only regular files are read"
    with pytest.raises(NotReadable, match="a FIFO"):
        finishes(lambda: file_digest(str(fifo)))
    item = finishes(lambda: list_images(str(tmp_path), "flat")).items[0]
    assert item.path == "x.jpg" and item.error.startswith("not a regular file (a FIFO)")


def test_a_link_to_dev_zero_is_refused_without_reading_it(tmp_path, monkeypatch):
    link = tmp_path / "zero.jpg"
    os.symlink("/dev/zero", link)
    read = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: read.append(n) or real_read(fd, n))
    assert decode_file(str(link)).reason == "not a regular file (a character device): only regular files are read"
    with pytest.raises(NotReadable):
        file_digest(str(link))
    assert read == []  # not one byte
    listing = embedder.inputs.sources.list_inputs([str(link)])
    assert listing.items[0].error.startswith("not a regular file (a character device)")


def test_a_file_larger_than_any_image_within_the_limit_is_refused_unread(tmp_path, monkeypatch):
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as fh:
        fh.truncate(3 << 30)  # 3 GB of holes: nothing on disk
    read = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: read.append(n) or real_read(fd, n))
    decoded = decode_file(str(sparse))
    assert decoded.image is None and decoded.reason.startswith("too large for an image: 3,221,225,472 bytes")
    assert "--max-pixels" in decoded.reason and read == []
    with pytest.raises(NotReadable, match="too large"):
        file_digest(str(sparse), max_file_bytes())
    # the bound follows the pixel limit: a small limit, a small file refused
    small = tmp_path / "small.png"
    small.write_bytes(b"\x89PNG" + bytes(max_file_bytes(10) + 1 - 4))
    assert decode_file(str(small), max_pixels=10).reason.startswith("too large for an image")
    assert read == []


def test_a_file_that_grows_past_the_bound_while_read_stops_at_the_bound(tmp_path, monkeypatch):
    path = tmp_path / "growing.png"
    path.write_bytes(b"x" * 100)
    monkeypatch.setattr(decode, "METADATA_BYTES", 1000)
    monkeypatch.setattr(decode, "READ_BLOCK", 4096)
    with open(path, "ab") as fh:  # stat said 100 bytes; the reader then meets a file 100 kB long
        fh.write(b"y" * 100_000)
    monkeypatch.setattr(os, "fstat", lambda fd, real=os.fstat: os.stat_result((*real(fd)[:6], 100, *real(fd)[7:])))
    with pytest.raises(NotReadable, match="too large"):
        decode.read_file(str(path), max_file_bytes(1))  # 1016 bytes allowed: stops after its first 4 kB block


# -- symbolic links in the input tree ------------------------------------------------------------------------
def test_symlink_loops_are_reported_and_folder_links_never_leave_their_class_or_loop(tmp_path):
    root = tmp_path / "data"
    write_tree(root, classes=("ants", "bees"), per_class=2)
    ants = root / "ants"
    os.symlink("loop.jpg", ants / "loop.jpg")  # a file link to itself
    os.symlink("d1", ants / "d1")  # a folder-looking link to itself
    os.symlink("../bees", ants / "bees_link")  # another class's images under this label: not followed
    os.symlink("..", ants / "up")  # the whole tree: not followed
    os.symlink(".", ants / "here")  # itself: listed already
    (ants / "sub").mkdir()
    photo(7).save(ants / "sub" / "deep.jpg")
    os.symlink("sub", ants / "sub_link")  # inside the class, but listed already: not twice
    os.symlink(str(ants / "img00.jpg"), root / "bees" / "an_ant.jpg")  # file links are followed
    os.symlink("ants", root / "loop_class")  # a top-level link to a class: a class folder, not a loop
    listing = finishes(lambda: list_images(str(root)))
    got = {i.path: (i.label, i.error) for i in listing.items}
    errors = {p: e for p, (_, e) in got.items() if e}
    assert errors["ants/loop.jpg"] == errors["ants/d1"] == "symbolic link loop (too many levels of symbolic links)"
    assert errors["ants/bees_link"].startswith("folder link that leaves its class folder (to ")
    assert errors["ants/up"].startswith("folder link that leaves its class folder")
    assert errors["ants/here"].startswith("folder link to a folder listed already")
    assert errors["ants/sub_link"].startswith("folder link to a folder listed already")
    assert got["ants/sub/deep.jpg"] == ("ants", None) and got["bees/an_ant.jpg"] == ("bees", None)
    assert not any(p.startswith(("ants/bees_link/", "ants/up/")) for p in got)
    assert got["loop_class/img00.jpg"] == ("loop_class", None)  # a linked class folder is a class


def test_symlink_loops_given_to_predict_style_inputs_are_items_with_a_reason(tmp_path):
    os.symlink("a.jpg", tmp_path / "a.jpg")
    photo(1).save(tmp_path / "b.jpg")
    listing = embedder.inputs.sources.list_inputs([str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")])
    assert [(os.path.basename(i.path), i.error) for i in listing.items] == [
        ("a.jpg", "symbolic link loop (too many levels of symbolic links)"),
        ("b.jpg", None),
    ]


# -- Pillow's limit follows --max-pixels -------------------------------------------------------------------
def test_max_pixels_above_pillows_own_limit_is_obeyed(monkeypatch):
    image = Image.new("RGB", (50, 40))
    out = io.BytesIO()
    image.save(out, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # stands for Pillow's default: 2,000 pixels is 100 times it
    assert decode_bytes(out.getvalue(), max_pixels=2000).image.size == (50, 40)
    assert Image.MAX_IMAGE_PIXELS == 2000
    assert decode_bytes(out.getvalue(), max_pixels=1999).reason.startswith("decompression bomb: 50x40 pixels")


def test_pillow_warnings_become_notes_not_stderr(capfd):
    decoded = decode_bytes(corrupt_exif_jpeg())
    assert decoded.image is not None and decoded.image.size == (64, 64)
    assert decoded.notes == ("Corrupt EXIF data. Expecting to read 12 bytes but only got 0.",)
    again = decode_bytes(corrupt_exif_jpeg())  # every time, not once per line of Pillow's code
    assert again.notes == decoded.notes
    assert "EXIF" not in capfd.readouterr().err


# -- one extract over all of it ------------------------------------------------------------------------------
def test_extract_skips_each_bad_input_with_its_reason_and_a_raised_limit_retries_big_images(tmp_path, capfd):
    root = tmp_path / "data"
    good = write_tree(root, classes=("ants", "bees"), per_class=2)
    ants = root / "ants"
    os.mkfifo(ants / "x.jpg")
    os.symlink("/dev/zero", ants / "zero.jpg")
    os.symlink("loop.jpg", ants / "loop.jpg")
    os.symlink("../bees", ants / "bees_link")
    (ants / "exif.jpg").write_bytes(corrupt_exif_jpeg())
    Image.new("RGB", (200, 150)).save(root / "bees" / "big.png")  # 30,000 pixels
    cache = str(tmp_path / "c.h5")
    first = finishes(lambda: embedder.extract(str(root), cache, max_pixels=20_000, **TORCH), 120)
    reasons = {f["path"]: f["reason"] for f in first.failed}
    assert first.rows == len(good) + 1 and first.embedded == len(good) + 1  # + exif.jpg
    assert reasons["ants/x.jpg"].startswith("not a regular file (a FIFO)")
    assert reasons["ants/zero.jpg"].startswith("not a regular file (a character device)")
    assert reasons["ants/loop.jpg"] == "symbolic link loop (too many levels of symbolic links)"
    assert reasons["ants/bees_link"].startswith("folder link that leaves its class folder")
    assert reasons["bees/big.png"].startswith("decompression bomb: 200x150 pixels is over the limit of 20,000")
    assert first.warnings == [
        {"path": "ants/exif.jpg", "warning": "Corrupt EXIF data. Expecting to read 12 bytes but only got 0."}
    ]
    assert "EXIF" not in capfd.readouterr().err
    # the same limit: nothing is tried again; the limit the reason advises: the big image is embedded
    assert finishes(lambda: embedder.extract(str(root), cache, max_pixels=20_000, **TORCH), 60).embedded == 0
    raised = finishes(lambda: embedder.extract(str(root), cache, max_pixels=30_000, **TORCH), 60)
    assert raised.embedded == 1 and raised.rows == len(good) + 2
    assert "bees/big.png" in set(CacheReader(cache).paths)
    assert "bees/big.png" not in {f["path"] for f in raised.failed} and len(raised.failed) == 4


# -- manifests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, data, message",
    [
        (
            "latin1.csv",
            "path,label\nok.jpg,a\ncaf\xe9.jpg,a\n".encode("latin-1"),
            "latin1.csv line 3: not UTF-8 text (byte 0xe9); save it as UTF-8",
        ),
        ("nul.csv", b"path,label\nok.jpg,a\nok2.jpg,a\nx\x00y.jpg,a\n", "nul.csv line 4: a NUL byte"),
        ("latin1.txt", "ok.jpg\ncaf\xe9.jpg\n".encode("latin-1"), "latin1.txt line 2: not UTF-8 text"),
        ("nul.txt", b"a\x00.jpg\n", "nul.txt line 1: a NUL byte"),
    ],
)
def test_a_manifest_in_another_encoding_or_with_a_nul_byte_is_one_line_naming_the_line(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(FeaturebankError) as caught:
        list_images(str(tmp_path / name))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_fifo_named_like_a_manifest_is_refused_not_waited_for(tmp_path):
    os.mkfifo(tmp_path / "m.csv")
    with pytest.raises(FeaturebankError, match="not a regular file \\(a FIFO\\)"):
        finishes(lambda: list_images(str(tmp_path / "m.csv")))


def test_confine_refuses_manifest_paths_that_leave_its_folder(tmp_path):
    inside = tmp_path / "set"
    inside.mkdir()
    photo(1).save(inside / "a.jpg")
    photo(2).save(tmp_path / "secret.jpg")
    os.symlink(str(tmp_path / "secret.jpg"), inside / "link.jpg")
    for line, _path in (("../secret.jpg", "../secret.jpg"), (str(tmp_path / "secret.jpg"), None), ("link.jpg", None)):
        (inside / "m.csv").write_text(f"path,label\na.jpg,x\n{line},y\n")
        listing = list_images(str(inside / "m.csv"))  # by default any path is read, as a shell would
        assert [i.error for i in listing.items] == [None, None]
        with pytest.raises(FeaturebankError, match=r"m\.csv line 3: .* is outside the folder of the list .* --confine"):
            list_images(str(inside / "m.csv"), confine=True)
    (inside / "m.csv").write_text("path,label\na.jpg,x\nsub/../a2.jpg,y\n")
    assert [i.path for i in list_images(str(inside / "m.csv"), confine=True).items] == ["a.jpg", "a2.jpg"]
    (inside / "l.txt").write_text("a.jpg\n../secret.jpg\n")
    with pytest.raises(FeaturebankError, match="l.txt path 2: ../secret.jpg is outside"):
        list_images(str(inside / "l.txt"), confine=True)


# -- damaged or crafted caches -------------------------------------------------------------------------------
def _garble_features(path, layer="flatten"):
    import h5py

    with h5py.File(path) as f:
        offset = f["features"][layer].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 100)
        fh.write(b"\xff" * 40)  # ten float32 of NaN-ish garbage inside the first chunk


def _crafted(tmp_path, name, edit):
    import shutil

    import h5py
    from helpers import synthetic_cache

    good = tmp_path / "good.h5"
    if not good.exists():
        synthetic_cache(good)
    path = tmp_path / name
    shutil.copy(good, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _only_format(f):
    for k in list(f.attrs):
        del f.attrs[k]
    for k in list(f):
        del f[k]
    f.attrs["format"] = "featurebank-cache"


CRAFTED = {
    "only-format.h5": (_only_format, "is damaged (format_version is None)"),
    "v99.h5": (
        lambda f: f.attrs.__setitem__("format_version", 99),
        "was written by a newer featurebank (cache format 99; this one reads up to 1): upgrade featurebank",
    ),
    "settings.h5": (
        lambda f: f.attrs.__setitem__("settings", '{"backbone": "resnet18", "lay'),
        "is damaged (JSONDecodeError",
    ),
    "no-layers.h5": (
        lambda f: f.attrs.__setitem__("settings", '{"backbone": "resnet18"}'),
        "is damaged (its settings lack weights, layers)",
    ),
    "rows.h5": (lambda f: f.__delitem__("rows/size"), "is damaged (rows/ lacks size)"),
    "short.h5": (
        lambda f: (f.__delitem__("rows/label"), f["rows"].create_dataset("label", data=["x"])),
        "is damaged (the columns of rows/ differ in length)",
    ),
    "features.h5": (lambda f: f.__delitem__("features/layer3"), "is damaged (features/layer3 is missing"),
    "classes.h5": (lambda f: f.attrs.__setitem__("classes", "[1, 2]"), "is damaged (settings, classes or info"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_damaged_or_crafted_caches_are_one_line_in_info_and_cv(tmp_path, name):
    from click.testing import CliRunner

    import cli

    edit, message = CRAFTED[name]
    path = _crafted(tmp_path, name, edit)
    with pytest.raises(FeaturebankError, match=r"^" + str(path).replace(".", r"\.")):
        CacheReader(str(path))
    for command in (["info", str(path)], ["cv", str(path), "-c", "logreg", "--folds", "2"]):
        result = CliRunner().invoke(cli.main, command)
        assert result.exit_code == 1
        assert message in result.output and result.output.count("\n") == 1, result.output


def test_garbage_in_feature_bytes_is_reported_as_damage_not_infinity(tmp_path):
    from click.testing import CliRunner
    from helpers import synthetic_cache

    import cli

    path = tmp_path / "c.h5"
    synthetic_cache(path)
    reader = CacheReader(str(path))
    assert reader.checksums and reader.verify() == 30 * (16 + 8) * 4
    _garble_features(path)
    reader = CacheReader(str(path))  # the metadata is fine: opening works
    with pytest.raises(FeaturebankError, match="is damaged \\(features/flatten cannot be read .*bytes changed on disk"):
        reader.features("flatten")
    with pytest.raises(FeaturebankError, match="features/flatten rows 0..29 fail their checksum"):
        reader.verify()
    assert reader.features("layer3").shape == (30, 8)  # the other layer is intact
    result = CliRunner().invoke(cli.main, ["cv", str(path), "-c", "logreg", "--folds", "2", "--layer", "flatten"])
    assert result.exit_code == 1 and "is damaged" in result.output and "inf" not in result.output.replace("info", "")
    result = CliRunner().invoke(cli.main, ["info", "--verify", str(path)])
    assert result.exit_code == 1 and "fail their checksum" in result.output


def test_a_cache_written_without_checksums_still_reads(tmp_path):
    import h5py
    from helpers import synthetic_cache

    path = tmp_path / "old.h5"
    X, _ = synthetic_cache(path)
    with h5py.File(path, "a") as f:  # as caches were written before checksums
        for layer in list(f["features"]):
            data = f["features"][layer][()]
            del f["features"][layer]
            f["features"].create_dataset(layer, data=data)
    reader = CacheReader(str(path))
    assert not reader.checksums and (reader.features("flatten") == X).all()


# -- a full disk ---------------------------------------------------------------------------------------------
def _fails_on(monkeypatch, name, suffix, after=0):
    """``os.<name>`` (pwrite) raises ENOSPC on a descriptor whose file ends with ``suffix``, once
    ``after`` such files were written whole: the disk fills up at that point."""
    import errno

    real = getattr(os, name)
    files = []

    def full(fd, data, *rest):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(suffix):
            if target not in files:
                files.append(target)
            if len(files) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, *rest)

    monkeypatch.setattr(os, name, full)


def _leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_a_full_disk_while_batches_are_written_is_one_line_and_a_rerun_completes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    paths = write_tree(root, per_class=4)  # 12 images, 3 batches of 4
    cache = tmp_path / "c.h5"
    _fails_on(monkeypatch, "pwrite", "-rank0.h5.tmp", after=1)  # the first batch fits, the second does not
    with pytest.raises(FeaturebankError) as caught:
        embedder.extract(str(root), str(cache), **TORCH)
    message = str(caught.value)
    assert (
        message.startswith(
            f"cannot write a batch to {cache}.parts: No space left on device; every batch "
            f"written before it is kept: free some space"
        )
        and "\n" not in message
    )
    assert _leftovers(tmp_path) == [] and not cache.exists()
    assert sorted(os.listdir(f"{cache}.parts")) == ["part-00000001-rank0.h5"]
    monkeypatch.undo()
    again = embedder.extract(str(root), str(cache), **TORCH)
    assert (again.rows, again.embedded, again.reused) == (12, 8, 4)  # the first batch is kept, not embedded again
    assert list(CacheReader(str(cache)).paths) == paths and _leftovers(tmp_path) == []


def test_a_full_disk_during_the_merge_keeps_the_old_cache_and_every_batch(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_tree(root, per_class=2)
    cache = tmp_path / "c.h5"
    before = embedder.extract(str(root), str(cache), **TORCH)
    write_tree(root, per_class=4, start=50)  # 6 new images, and the 6 old ones rewritten: 12 to embed
    _fails_on(monkeypatch, "pwrite", "c.h5.tmp")
    with pytest.raises(FeaturebankError) as caught:
        embedder.extract(str(root), str(cache), **TORCH)
    assert str(caught.value).startswith(
        f"cannot merge the batches into {cache}: No space left on device; the cache "
        f"is as it was and every batch is kept in {cache}.parts"
    )
    assert _leftovers(tmp_path) == [] and len(CacheReader(str(cache))) == before.rows == 6
    assert len(os.listdir(f"{cache}.parts")) == 3
    monkeypatch.undo()
    again = embedder.extract(str(root), str(cache), **TORCH)
    assert (again.rows, again.embedded) == (12, 0) and not os.path.exists(f"{cache}.parts")


def test_a_full_disk_while_spilling_removes_the_spill_and_the_merged_file(tmp_path, monkeypatch):
    from embedder.cache import hdf5 as cache_module

    root = tmp_path / "data"
    write_tree(root, per_class=4)
    cache = tmp_path / "c.h5"
    monkeypatch.setattr(
        cache_module,
        "copy_rows",
        lambda out, where, source, spill, block_bytes=None: cache_module._copy_spilled(
            out, where, source, cache_module.Blocks.for_row(4 * out.shape[1], 4096), spill
        ),
    )
    _fails_on(monkeypatch, "pwrite", ".spill.tmp")
    with pytest.raises(FeaturebankError, match="cannot merge the batches into .*: No space left on device"):
        embedder.extract(str(root), str(cache), **TORCH)
    assert _leftovers(tmp_path) == [] and len(os.listdir(f"{cache}.parts")) == 3


@pytest.mark.integration
@pytest.mark.parametrize("limit, says", [(4 << 10, "cannot write a batch to"), (32 << 10, "cannot merge the batches")])
def test_a_real_write_failure_exits_1_with_one_line_never_a_crash(tmp_path, limit, says):
    """The kernel refuses the write (a file size limit: EFBIG, as a full disk gives ENOSPC), inside h5py's and
    featurebank's own writes. Parts are 23 kB here, the merged cache 40 kB: 4 kB fails a batch, 32 kB the merge."""
    import resource
    import subprocess
    import sys

    root = tmp_path / "data"
    write_tree(root, per_class=4)
    cache = tmp_path / "c.h5"
    command = [
        sys.executable,
        "-m",
        "cli",
        "extract",
        str(root),
        "--cache",
        str(cache),
        "--backbone",
        "resnet18",
        "--weights",
        "none",
        "--resize",
        "72",
        "--crop",
        "64",
        "--batch-size",
        "4",
        "--engine",
        "torch",
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        command,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"Error: {says}") and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "File too large" in done.stderr and _leftovers(tmp_path) == []
    rerun = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert rerun.returncode == 0 and len(CacheReader(str(cache))) == 12


# -- out of memory while the engines are measured (--crop 2000) ----------------------------------------------
class _Hungry:
    """An engine that runs out of memory on more than ``fits`` images, as torch (RuntimeError) or Python does."""

    def __init__(self, fits, error):
        self.fits, self.error, self.sizes = fits, error, []

    def __call__(self, images):
        self.sizes.append(len(images))
        if len(images) > self.fits:
            raise self.error
        return {"flatten": images.reshape(len(images), -1)[:, :4].astype("float32") + 1}


@pytest.mark.parametrize(
    "error",
    [MemoryError(), RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 98304000000 bytes.")],
)
def test_measuring_the_engines_halves_its_batch_on_out_of_memory(error, capfd):
    from embedder.engines.engine import Prepared, _measure

    engines = {"onnxruntime": _Hungry(4, error), "torch": _Hungry(4, error)}
    prepared = Prepared()
    n, worst, rates = _measure(engines, 16, 8, prepared)
    assert n == 4 and prepared.max_batch == 4 and worst == 0.0 and set(rates) == {"onnxruntime", "torch"}
    assert engines["onnxruntime"].sizes == [16, 8, 4, 4, 4, 4]  # halved twice, then warm-up and three timings
    assert "out of memory measuring the engines on 8 images of 8 x 8: measuring on 4" in capfd.readouterr().err
    with pytest.raises(FeaturebankError, match="out of memory on a single image of 8 x 8 while measuring the engines"):
        _measure({"onnxruntime": _Hungry(0, error), "torch": _Hungry(0, error)}, 16, 8, Prepared())


@pytest.mark.integration
def test_extract_starts_at_the_batch_that_fitted_when_measuring(tmp_path, monkeypatch, capfd):
    from embedder.engines import engine as engines_module

    root = tmp_path / "data"
    write_tree(root, per_class=3)
    seen = []

    def hungry(call):
        def run(self, images):
            seen.append(len(images))
            if len(images) > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return call(self, images)

        return run

    monkeypatch.setattr(engines_module.OnnxEngine, "__call__", hungry(engines_module.OnnxEngine.__call__))
    monkeypatch.setattr(engines_module.TorchEngine, "__call__", hungry(engines_module.TorchEngine.__call__))
    summary = embedder.extract(
        str(root), str(tmp_path / "c.h5"), engine_dir=str(tmp_path / "engines"), **{**FAST, "batch_size": 8}
    )
    assert summary.rows == 9 and summary.embedded == 9 and summary.failed == []
    assert "measuring on 2, and embedding in batches of 2" in capfd.readouterr().err
    loop = seen[seen.index(2) + 8 :]  # after the measurement (warm-up and 3 timings, 2 engines)
    assert loop and max(loop) == 2  # the run never tried its batch of 8 again


def test_predict_and_evaluate_report_symlink_loops_and_skip_them(tmp_path, monkeypatch):
    from classifiers.bundle import evaluate, predict, train

    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    write_tree(root, classes=("ants", "bees"), per_class=3)
    bundle = train(embedder.extract(str(root), str(tmp_path / "train.h5"), **TORCH).cache, classifier="logreg")
    held = tmp_path / "held"
    write_tree(held, classes=("ants", "bees"), per_class=2, start=40)
    os.symlink("loop.jpg", held / "ants" / "loop.jpg")
    os.symlink("d1", held / "ants" / "d1")
    os.symlink("../bees", held / "ants" / "bees_link")
    run = {"batch_size": 4, "workers": 0, "engine": "torch"}
    scored = finishes(lambda: evaluate(bundle, str(held), **run), 120)
    assert scored["rows"] == 4 and sum(map(sum, scored["confusion"])) == 4  # bees are not counted as ants twice
    predicted = finishes(lambda: predict(bundle, [str(held / "ants"), str(held / "ants" / "loop.jpg")], **run), 120)
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in predicted["rows"]}
    assert rows["loop.jpg"]["error"] == "symbolic link loop (too many levels of symbolic links)"
    assert rows["d1"]["error"] == "symbolic link loop (too many levels of symbolic links)"
    assert rows["bees_link"]["error"].startswith("folder link that leaves its folder")
    assert {n for n, r in rows.items() if "predicted" in r} == {"img00.jpg", "img01.png"}


def test_a_damaged_batch_is_named_by_the_merge_and_nothing_is_replaced(tmp_path):
    import numpy as np
    from helpers import SYNTHETIC_SETTINGS

    from embedder.cache.hdf5 import CacheWriter

    path = str(tmp_path / "c.h5")
    rows = {
        "path": ["a.jpg", "b.jpg"],
        "label": ["x", "y"],
        "group": ["", ""],
        "size": [1, 2],
        "mtime_ns": [1, 1],
        "digest": ["d1", "d2"],
    }
    feats = {"flatten": np.ones((2, 300), np.float32), "layer3": np.zeros((2, 8), np.float32)}
    empty = {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")}
    with CacheWriter(path, SYNTHETIC_SETTINGS, "classes:/synthetic", "/synthetic") as writer:
        writer.write_batch(rows, feats, empty)
        (part,) = os.listdir(path + ".parts")
        _garble_features(os.path.join(path + ".parts", part))
        with pytest.raises(
            FeaturebankError,
            match=r"cannot merge the batches into .*: a batch in .*\.parts or the "
            r"cache is damaged \(.*\); delete that folder",
        ):
            writer.commit([("a.jpg", "x", ""), ("b.jpg", "y", "")], {})
    assert not os.path.exists(path) and _leftovers(tmp_path) == [] and os.listdir(path + ".parts") == [part]


def test_info_shows_an_older_cache_whose_settings_lack_keys_with_their_defaults(tmp_path):
    import json

    import h5py
    from click.testing import CliRunner
    from helpers import synthetic_cache

    import cli

    path = tmp_path / "old.h5"
    synthetic_cache(path)
    with h5py.File(path, "a") as f:
        stored = json.loads(f.attrs["settings"])
        del stored["pooling"], stored["precision"], stored["preprocessing"]
        f.attrs["settings"] = json.dumps(stored)
    result = CliRunner().invoke(cli.main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "resize 256 (bilinear), crop 224" in result.output and "precision fp32; pooling avg" in result.output


def test_a_cache_row_that_is_not_numbers_is_one_line_naming_its_image_before_any_fit(tmp_path):
    """A backbone whose output overflowed (or a damaged file) leaves NaN or inf in a row: every command that fits or
    picks on the rows says which image, in one line, where knn and rbf-svm had ended in scikit-learn's traceback."""
    import numpy as np
    from helpers import synthetic_cache

    from classifiers.bundle import pseudo_labels, train
    from classifiers.crossval import cross_validate
    from classifiers.selection import select

    X = np.random.default_rng(0).normal(size=(30, 6))
    X[4, 2], X[7, 0] = np.nan, np.inf
    synthetic_cache(tmp_path / "bad.h5", counts=(10, 10, 10), dim=6, features=X)
    synthetic_cache(tmp_path / "free.h5", counts=(10, 10, 10), dim=6, features=X, labels=False)
    synthetic_cache(tmp_path / "good.h5", counts=(10, 10, 10), dim=6)
    model = tmp_path / "m.fbmodel"
    train(str(tmp_path / "good.h5"), classifier="knn", layer="flatten", out=str(model))
    said = r"bad.h5: 2 image\(s\) have NaN or infinite values in layer flatten \(e.g. class0/img004.jpg\)"
    for run in (
        lambda: train(str(tmp_path / "bad.h5"), classifier="knn", layer="flatten"),
        lambda: cross_validate(str(tmp_path / "bad.h5"), classifiers=["rbf-svm"], layers=["flatten"], folds=3),
    ):
        with pytest.raises(FeaturebankError, match=said) as caught:
            run()
        assert "\n" not in str(caught.value)
    free = said.replace("bad.h5", "free.h5")
    with pytest.raises(FeaturebankError, match=free):
        pseudo_labels(str(model), str(tmp_path / "free.h5"))
    with pytest.raises(FeaturebankError, match=free):
        select(str(tmp_path / "free.h5"), budget=3)
