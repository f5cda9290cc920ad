"""Bad input, second pass (issue 32), on the embedder's side: tar shards whose headers lie, samples larger than any
image, Parquet cells, names HDF5 cannot hold as text, deep sidecars, brace patterns, crafted caches, and
checkpoints whose recorded settings or head shapes are wrong. Each is a reason or one line, never a traceback,
a hang or memory without bound; the good samples still reach the cache."""

from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
import pytest
from helpers import FAST, finishes, photo

import embedder
from embedder.cache.hdf5 import CacheReader
from embedder.inputs.decode import max_file_bytes
from embedder.inputs.shards import ShardOptions, list_input, scan_tar
from embedder.kernel.errors import FeaturebankError
from embedder.kernel.preprocess import Preprocessing

TORCH = dict(FAST, engine="torch")


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    photo(seed, (40, 32)).save(out, "JPEG", quality=85)
    return out.getvalue()


# -- tar headers, built by hand ----------------------------------------------------------------------------------
def header(name: bytes, size: int = 0, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    """One ustar header block with a correct checksum; ``size_field`` replaces the 12 bytes of the size."""
    block = bytearray(512)
    block[: len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b"        "
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def member(name: bytes, data: bytes, kind: bytes = b"0") -> bytes:
    return header(name, len(data), kind) + data + b"\0" * (-len(data) % 512)


def pax(records: bytes) -> bytes:
    return member(b"././@PaxHeader", records, b"x")


def record(key: str, value: bytes) -> bytes:
    body = key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) + 1 != n:
        n += 1
    return str(n).encode() + b" " + body


END = b"\0" * 1024


def good_then(tail: bytes) -> bytes:
    """A shard of two good samples, then ``tail`` (the lie), then the end blocks."""
    return member(b"a.jpg", jpeg(1)) + member(b"a.cls", b"ants") + member(b"b.jpg", jpeg(2)) + tail + END


LIES = {
    "base-256 size of 2^80": header(b"c.jpg", size_field=b"\x80" + (1 << 80).to_bytes(11, "big")) + b"\0" * 512,
    "pax size of 1e20": pax(record("size", b"100000000000000000000")) + header(b"c.jpg", 10) + b"\0" * 512,
    "pax size that is no number": pax(record("size", b"12abc")) + header(b"c.jpg", 10) + b"\0" * 512,
    "negative pax size": pax(record("size", b"-5")) + header(b"c.jpg", 10) + b"\0" * 512,
    "pax record of length 0": pax(b"0 path=x\n" + b"\0" * 20) + header(b"c.jpg", 10) + b"\0" * 512,
    "pax record longer than its header": pax(b"999 path=x\n") + header(b"c.jpg", 10) + b"\0" * 512,
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_tar_header_that_lies_is_a_failure_with_a_reason_and_the_samples_before_it_are_kept(tmp_path, lie):
    shard = tmp_path / "s.tar"
    shard.write_bytes(good_then(LIES[lie]))
    listing = finishes(lambda: list_input(str(shard), options=ShardOptions(label_key="cls")), 10)
    errors = {i.path: i.error for i in listing.items}
    assert errors["s.tar/a"] is None and errors["s.tar/b"] is None
    assert [i.label for i in listing.items if i.path == "s.tar/a"] == ["ants"]
    bad = {p: e for p, e in errors.items() if e}
    says = {
        "base-256 size of 2^80": ("s.tar/c", "truncated shard: c's members run past the end of the file"),
        "pax size of 1e20": ("s.tar/c", "truncated shard: c's members run past the end of the file"),
        "pax size that is no number": ("s.tar", "its size record b'12abc' is not a decimal number"),
        "negative pax size": ("s.tar", "its size record b'-5' is not a decimal number"),
        "pax record of length 0": ("s.tar", "a record at byte 0 declares a length of 0, which does not fit"),
        "pax record longer than its header": ("s.tar", "declares a length of 999, which does not fit"),
    }[lie]
    assert list(bad) == [says[0]] and says[1] in bad[says[0]], bad
    if says[0] == "s.tar":  # the damage between samples: the shard's own failure, those before it kept
        assert bad["s.tar"].startswith("truncated shard: it stops after 2 samples (unreadable pax header at byte")


def test_the_scan_of_a_pax_header_of_length_zero_returns_at_once():
    raw = good_then(LIES["pax record of length 0"])
    members, damage = finishes(lambda: scan_tar(io.BytesIO(raw), len(raw)), 5)
    assert [m[0] for m in members] == ["a.jpg", "a.cls", "b.jpg"]
    assert damage is not None and "pax" in damage


# -- one bound on the bytes of any sample -----------------------------------------------------------------------
def test_a_tar_member_larger_than_any_image_is_refused_unread(tmp_path, monkeypatch):
    """A sparse shard declaring a 72 MiB member: at --max-pixels 2000 no image can be larger than 64 MiB and a
    little, so the member is refused before a byte of it is read, with the reason a file gets."""
    from embedder.inputs import samples

    big = 72 << 20
    shard = tmp_path / "s.tar"
    with open(shard, "wb") as fh:
        fh.write(member(b"a.jpg", jpeg(1)) + header(b"big.jpg", big))
        fh.seek(big + (-big % 512), 1)
        fh.write(END)
    assert os.stat(shard).st_blocks * 512 < 1 << 20  # sparse: a few KB on disk
    listing = list_input(str(shard))
    items = {i.path: i for i in listing.items}
    assert items["s.tar/big"].error is None and items["s.tar/big"].size == big
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(samples.os, "pread", lambda fd, n, at: reads.append(n) or real_pread(fd, n, at))
    dataset = listing.dataset([items["s.tar/a"], items["s.tar/big"]], Preprocessing(resize=36, crop=32), 2000)
    assert dataset.decode(0).reason is None
    refused = dataset.decode(1)
    assert refused.image is None and refused.reason.startswith(f"too large for an image: {big:,} bytes")
    assert f"({max_file_bytes(2000):,} bytes; raise it with --max-pixels" in refused.reason
    assert max(reads) < 1 << 20  # the big member was never read
    with pytest.raises(OSError, match="too large for an image"):
        listing.item_digest(items["s.tar/big"], 2000)
    assert max(reads) < 1 << 20


# -- brace patterns and sidecars ---------------------------------------------------------------------------------
def test_a_brace_pattern_of_a_hundred_million_names_is_one_line_not_memory(tmp_path):
    (tmp_path / "s-0.tar").write_bytes(good_then(b""))
    with pytest.raises(FeaturebankError, match=r"expands to 100,000,000 names.*more than .* at most"):
        finishes(lambda: list_input(str(tmp_path / "s-{0..99999999}.tar")), 5)
    with pytest.raises(FeaturebankError, match=r"expands to 1,000,000 names"):  # two ranges multiply
        finishes(lambda: list_input(str(tmp_path / "s-{0..999}-{0..999}.tar")), 5)
    listing = list_input(str(tmp_path / "s-{0..9}.tar"))  # a pattern of a reasonable size still works
    assert [i.path for i in listing.items] == ["s-0.tar/a", "s-0.tar/b"]


def test_a_json_sidecar_nested_100000_deep_is_that_samples_reason(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    shard = tmp_path / "s.tar"
    shard.write_bytes(
        member(b"a.jpg", jpeg(1))
        + member(b"a.json", b'{"label": "ants"}')
        + member(b"b.jpg", jpeg(2))
        + member(b"b.json", deep)
        + END
    )
    listing = list_input(str(shard), options=ShardOptions(label_key="json:label"))
    items = {i.path: i for i in listing.items}
    assert items["s.tar/a"].error is None and items["s.tar/a"].label == "ants"
    assert items["s.tar/b"].error.startswith("unreadable label or group sidecar (nested too deep")


# -- names that HDF5 cannot hold as text -------------------------------------------------------------------------
def test_a_nul_in_a_pax_path_refuses_that_member_naming_the_shard(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(
        member(b"a.jpg", jpeg(1)) + pax(record("path", b"b\0x.jpg")) + member(b"placeholder.jpg", jpeg(2)) + END
    )
    listing = list_input(str(shard))
    errors = {i.path: i.error for i in listing.items}
    assert errors["s.tar/a"] is None
    assert not any("\0" in p for p in errors)
    bad = [e for p, e in errors.items() if e]
    assert len(bad) == 1 and "NUL" in bad[0] and "s.tar" in [p for p, e in errors.items() if e][0]


def test_a_nul_in_a_parquet_key_refuses_that_row_naming_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"key": ["a", "b\0x"], "image": [jpeg(1), jpeg(2)], "label": ["x", "y"]}), path)
    listing = list_input(str(path))
    errors = {i.path: i.error for i in listing.items}
    assert errors["p.parquet/a"] is None and not any("\0" in p for p in errors)
    bad = [(p, e) for p, e in errors.items() if e]
    assert len(bad) == 1 and bad[0][0].startswith("p.parquet") and "NUL" in bad[0][1] and "row 1" in bad[0][1]


NOT_UTF8 = b"caf\xe9"  # Latin-1 é


def test_a_non_utf8_member_name_is_stored_as_its_bytes_and_a_rerun_reuses_it(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(member(b"a.jpg", jpeg(1)) + member(NOT_UTF8 + b".jpg", jpeg(2)) + END)
    cache = tmp_path / "c.h5"
    first = embedder.extract(str(shard), str(cache), **TORCH)
    name = "s.tar/" + NOT_UTF8.decode("utf-8", "surrogateescape")
    assert first.rows == 2 and not first.failed
    reader = CacheReader(str(cache))
    assert sorted(reader.paths) == sorted(["s.tar/a", name])
    again = embedder.extract(str(shard), str(cache), **TORCH)
    assert again.embedded == 0 and again.reused == 2 and again.rows == 2


def test_a_non_utf8_file_name_in_a_folder_is_stored_as_its_bytes_and_read_back_to_the_same_path(tmp_path):
    folder = os.fsencode(tmp_path / "photos")
    os.makedirs(os.path.join(folder, b"ants"))
    os.makedirs(os.path.join(folder, b"bees"))
    for i, name in enumerate([b"ants/a.jpg", b"ants/" + NOT_UTF8 + b".jpg", b"bees/b.jpg"]):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(jpeg(i))
    cache = tmp_path / "c.h5"
    summary = embedder.extract(str(tmp_path / "photos"), str(cache), **TORCH)
    assert summary.rows == 3 and not summary.failed
    reader = CacheReader(str(cache))
    odd = "ants/" + NOT_UTF8.decode("utf-8", "surrogateescape") + ".jpg"
    assert odd in list(reader.paths)
    full = [p for p in reader.full_paths() if "caf" in p][0]
    assert os.fsencode(full) == os.path.join(folder, b"ants/" + NOT_UTF8 + b".jpg") and os.path.isfile(full)
    assert embedder.extract(str(tmp_path / "photos"), str(cache), **TORCH).embedded == 0


# -- crafted caches ----------------------------------------------------------------------------------------------
def _crafted(tmp_path, edit):
    """A copy of a small synthetic cache whose ``features/flatten`` is replaced by ``edit(f, n, dim)``."""
    import h5py
    from helpers import synthetic_cache

    path = tmp_path / "crafted.h5"
    synthetic_cache(path)
    with h5py.File(path, "a") as f:
        n, dim = f["features/flatten"].shape
        del f["features/flatten"]
        edit(f, n, dim)
    return path


def _wide(f, n, dim):
    f["features"].create_dataset("flatten", shape=(n, 1 << 38), dtype="f4", chunks=(1, 1024))


def _external(target):
    def edit(f, n, dim):
        f["features"].create_dataset("flatten", shape=(n, dim), dtype="f4", external=[(target, 0, 4 * n * dim)])

    return edit


def _virtual(tmp_path):
    def edit(f, n, dim):
        import h5py

        layout = h5py.VirtualLayout(shape=(n, dim), dtype="f4")
        layout[:] = h5py.VirtualSource(str(tmp_path / "gone.h5"), "x", shape=(n, dim))
        f["features"].create_virtual_dataset("flatten", layout, fillvalue=0)

    return edit


def _run_cli(args):
    from click.testing import CliRunner

    import cli

    return CliRunner().invoke(cli.main, args)


@pytest.mark.parametrize("case", ["wide", "passwd", "fifo", "virtual"])
def test_a_crafted_cache_is_refused_when_opened_in_one_line_never_read(tmp_path, case):
    if case == "fifo":
        os.mkfifo(tmp_path / "fifo")
    edit = {
        "wide": _wide,
        "passwd": _external("/etc/passwd"),
        "fifo": _external(str(tmp_path / "fifo")),
        "virtual": _virtual(tmp_path),
    }[case]
    path = _crafted(tmp_path, edit)
    says = {
        "wide": "features/flatten declares 274,877,906,944 columns",
        "passwd": "features/flatten is stored outside the file (HDF5 external storage: /etc/passwd)",
        "fifo": "features/flatten is stored outside the file (HDF5 external storage: ",
        "virtual": "features/flatten is an HDF5 virtual dataset",
    }[case]
    with pytest.raises(FeaturebankError, match=f"^{path} is damaged .*" + says.replace("(", r"\(").replace(")", r"\)")):
        finishes(lambda: CacheReader(str(path)), 10)
    for args in (["info", str(path)], ["info", str(path), "--verify"], ["cv", str(path), "-c", "logreg"]):
        result = finishes(lambda args=args: _run_cli(args), 20)
        assert result.exit_code == 1 and says in result.output and result.output.count("\n") == 1, result.output


def test_declared_shapes_beyond_the_file_are_refused_and_a_real_cache_still_opens(tmp_path):
    import h5py
    from helpers import synthetic_cache

    path = tmp_path / "c.h5"
    X, _ = synthetic_cache(path)
    reader = CacheReader(str(path))
    assert np.array_equal(reader.features("flatten"), X)
    with h5py.File(path, "a") as f:  # a rows/ column declaring 2^36 rows, none of them stored
        del f["rows/size"]
        f["rows"].create_dataset("size", shape=(1 << 36,), dtype="i8", chunks=(1024,))
    with pytest.raises(FeaturebankError, match=r"rows/size declares 68,719,476,736 values .* more than the file holds"):
        finishes(lambda: CacheReader(str(path)), 10)


# -- checkpoints and weights files -------------------------------------------------------------------------------
def _checkpoint(path, state, **extra):
    import torch

    torch.save({"state_dict": state, **extra} if extra else state, path)
    return str(path)


@pytest.mark.parametrize(
    "recorded, says",
    [
        ({"resize": 72, "crop": 64, "std": [0.2, 0.2, 0.2]}, "lacks mean"),
        ("bilinear", "is not a mapping"),
        ({"resize": 72, "crop": 64, "mean": "0.5", "std": [0.2, 0.2, 0.2]}, "mean is not three numbers"),
        ({"resize": 72, "crop": 64, "mean": [0.5] * 3, "std": [0.0, 0.2, 0.2]}, "std is not three numbers above 0"),
        ({"resize": -1, "crop": 64, "mean": [0.5] * 3, "std": [0.2] * 3}, "resize is not a whole number"),
        ({"resize": 72, "crop": 64, "mean": [0.5] * 3, "std": [0.2] * 3, "interpolation": "magic"}, "interpolation"),
    ],
)
def test_a_checkpoints_recorded_preprocessing_that_is_wrong_is_one_line(tmp_path, recorded, says):
    import torch

    from embedder.backbones.registry import preprocessing_for, resolve_weights

    path = _checkpoint(tmp_path / "ft.pth", {"fc.weight": torch.zeros(2, 512)}, preprocessing=recorded)
    with pytest.raises(
        FeaturebankError, match=rf"^weights file {path} records a preprocessing that is not valid .*{says}"
    ):
        preprocessing_for("resnet18", resolve_weights("resnet18", path))
    good = {"resize": 72, "crop": 64, "mean": [0.5] * 3, "std": [0.2] * 3, "interpolation": "bicubic"}
    path = _checkpoint(tmp_path / "good.pth", {"fc.weight": torch.zeros(2, 512)}, preprocessing=good)
    prep = preprocessing_for("resnet18", resolve_weights("resnet18", path))
    assert (prep.resize, prep.crop, prep.mean, prep.interpolation) == (72, 64, (0.5, 0.5, 0.5), "bicubic")


def _resnet18_state(head, bias=None):
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = {k: v for k, v in resnet18(num_classes=2).state_dict().items() if not k.startswith("fc.")}
    bias = torch.zeros(head.shape[0] if head.ndim else 1) if bias is None else bias
    return {**state, "fc.weight": head, "fc.bias": bias}


def test_a_torchvision_head_weight_that_is_0_d_or_declares_a_trillion_classes_is_one_line(tmp_path):
    import torch

    from embedder.backbones.registry import head_classes, load_backbone

    flat = _checkpoint(tmp_path / "flat.pth", _resnet18_state(torch.tensor(1.0)))
    for call in (lambda: load_backbone("resnet18", flat), lambda: head_classes("resnet18", flat)):
        with pytest.raises(FeaturebankError, match=r"fc\.weight has shape \(\), not \(classes, 512\)"):
            call()
    trillion = _resnet18_state(torch.zeros(1, 1).expand(10**12, 512), torch.zeros(1).expand(10**12))
    huge = _checkpoint(tmp_path / "huge.pth", trillion)  # a stride-0 view: 4 bytes on disk, 2 PB built
    with pytest.raises(FeaturebankError, match=r"fc\.weight declares 512,000,000,000,000 values .* more than the"):
        finishes(lambda: load_backbone("resnet18", huge), 20)
    many = _resnet18_state(torch.zeros(1, 1).expand(2_000_000, 512), torch.zeros(1).expand(2_000_000))
    many = _checkpoint(tmp_path / "many.pth", many)
    with pytest.raises(FeaturebankError, match=r"fc\.weight declares 2,000,000 classes, more than the 1,000,000 at"):
        finishes(lambda: load_backbone("resnet18", many), 20)
    fine = _checkpoint(tmp_path / "fine.pth", _resnet18_state(torch.zeros(3, 512)))
    model = load_backbone("resnet18", fine).model
    assert model.fc.weight.shape == (3, 512)


def test_a_timm_head_weight_that_is_0_d_or_declares_a_trillion_classes_is_one_line(tmp_path):
    import torch

    from embedder.backbones.registry import load_backbone
    from embedder.backbones.timm import from_file

    state = {"head.fc.weight": torch.tensor(1.0), "head.fc.bias": torch.zeros(1)}
    flat = _checkpoint(tmp_path / "flat.pth", state)
    with pytest.raises(FeaturebankError, match=r"head\.fc\.weight has shape \(\), not \(classes, 320\)"):
        from_file("timm:convnext_atto.d2_in1k", flat, 64)
    state = {"head.fc.weight": torch.zeros(1, 1).expand(10**12, 320), "head.fc.bias": torch.zeros(1).expand(10**12)}
    huge = _checkpoint(tmp_path / "huge.pth", state)
    with pytest.raises(FeaturebankError, match=r"head\.fc\.weight declares 320,000,000,000,000 values"):
        finishes(lambda: load_backbone("timm:convnext_atto", huge, crop=64, resize=72), 20)


# -- Parquet cells -----------------------------------------------------------------------------------------------
def test_a_parquet_cell_larger_than_any_image_is_refused_before_it_is_copied_and_a_lone_one_unread(
    tmp_path, monkeypatch
):
    """3 MiB of zeros (a few KB with zstd) at --max-pixels 2000 with 1 MiB of metadata allowed (a bound of 1 MiB and
    a little; 64 MiB in the product): refused with the file's reason; in a row group of its own it is refused from
    the metadata, the row group never read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(embedder.inputs.decode, "METADATA_BYTES", 1 << 20)
    zeros = b"\0" * (3 << 20)
    path = tmp_path / "p.parquet"
    table = pa.table({"key": ["a", "b", "c", "d"], "image": [jpeg(1), zeros, zeros, jpeg(2)]})
    pq.write_table(table, path, compression="zstd", row_group_size=2)  # groups (a, b) and (c, d)
    lone = tmp_path / "lone.parquet"
    pq.write_table(table.slice(1, 1), lone, compression="zstd")
    assert os.path.getsize(path) < 100_000 and os.path.getsize(lone) < 100_000
    prep = Preprocessing(resize=36, crop=32)
    listing = list_input(str(path))
    items = {i.path: i for i in listing.items}
    decoded = [listing.dataset([items[f"p.parquet/{k}"]], prep, 2000).decode(0) for k in "abcd"]
    assert [d.reason is None for d in decoded] == [True, False, False, True]
    bound = max_file_bytes(2000)
    for d in decoded[1:3]:
        assert d.reason == f"too large for an image: {3 << 20:,} bytes is more than any image within the pixel " + (
            f"limit can be ({bound:,} bytes; raise it with --max-pixels if the image is genuine)"
        )
    read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, *a, **k: read.append(a) or real(self, *a, **k))
    listing = list_input(str(lone))
    refused = listing.dataset(listing.items, prep, 2000).decode(0)
    assert refused.reason.startswith("too large for an image: ") and read == []
    assert listing.dataset(listing.items, prep).decode(0).reason == "not an image file (Pillow cannot identify it)"
    monkeypatch.setattr(embedder.inputs.samples, "GROUP_BYTES", 0)  # every row group streamed a row at a time
    listing = list_input(str(path))
    items = {i.path: i for i in listing.items}
    dataset = listing.dataset([items[f"p.parquet/{k}"] for k in "dcba"], prep, 2000)  # out of order: restarts
    streamed = [dataset.decode(i) for i in range(4)]
    assert [d.digest for d in streamed] == [d.digest for d in reversed(decoded)]
    assert [d.reason for d in streamed] == [d.reason for d in reversed(decoded)]
    assert np.array_equal(np.asarray(streamed[0].image), np.asarray(decoded[3].image))


def test_a_raised_limit_retries_a_sample_refused_for_its_size_by_the_size_its_reason_names():
    from embedder.inputs.decode import fits_now, too_large

    reason = too_large(72 << 20, max_file_bytes(2000))
    assert not fits_now(reason, 30_000, 2000)  # a Parquet row's size is its file's: the reason's size counts
    assert fits_now(reason, 30_000, 5_000_000)


def test_parquet_rows_whose_page_declares_more_than_the_bound_are_refused_unread(tmp_path, monkeypatch):
    """The issue's file, smaller: two cells of the same 3 MiB of zeros (one dictionary page of one value), and the
    same without a dictionary (a page per cell): each row refused from its page header, no page decompressed (a
    bound of 1 MiB and a little: 1 MiB of metadata allowed here, 64 MiB in the product)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(embedder.inputs.decode, "METADATA_BYTES", 1 << 20)
    zeros = b"\0" * (3 << 20)
    table = pa.table({"key": ["a", "b", "c"], "image": [zeros, zeros, jpeg(3)]})
    pq.write_table(table.slice(0, 2), tmp_path / "dictionary.parquet", compression="zstd")
    pq.write_table(table, tmp_path / "plain.parquet", compression="zstd", use_dictionary=False, write_batch_size=1)
    read = []
    for method in ("read_row_group", "iter_batches"):
        real = getattr(pq.ParquetFile, method)
        monkeypatch.setattr(
            pq.ParquetFile, method, lambda self, *a, _real=real, **k: read.append(a) or _real(self, *a, **k)
        )
    prep = Preprocessing(resize=36, crop=32)
    listing = list_input(str(tmp_path / "dictionary.parquet"))
    reasons = [listing.dataset(listing.items, prep, 2000).decode(i).reason for i in range(2)]
    assert all(r.startswith("too large for an image: ") for r in reasons) and read == []
    listing = list_input(str(tmp_path / "plain.parquet"))
    dataset = listing.dataset(listing.items, prep, 2000)
    assert [dataset.decode(i).reason is None for i in range(2)] == [False, False] and read == []
    assert dataset.decode(2).reason is None  # the small image is read (streamed past the refused pages)


def test_writing_into_a_crafted_cache_copies_nothing_from_outside_it(tmp_path):
    import h5py
    from helpers import SYNTHETIC_SETTINGS

    from embedder.cache.hdf5 import CacheWriter

    path = _crafted(tmp_path, _external("/etc/passwd"))
    with h5py.File(path) as f:
        source, root = f.attrs["source"], f.attrs["root"]
    writer = CacheWriter(str(path), SYNTHETIC_SETTINGS, source, root, {})
    with pytest.raises(FeaturebankError, match="HDF5 external storage: /etc/passwd"), writer:
        pass


def test_a_checkpoints_recorded_classes_that_are_not_names_are_one_line(tmp_path):
    import torch

    from embedder.backbones.registry import head_classes

    path = _checkpoint(tmp_path / "ft.pth", _resnet18_state(torch.zeros(3, 512)), classes="abc")
    with pytest.raises(FeaturebankError, match="records classes that are not a list of names"):
        head_classes("resnet18", path)


def test_image_files_named_on_the_command_line_may_have_names_that_are_not_utf8(tmp_path):
    from embedder.inputs.sources import list_inputs

    odd = os.path.join(os.fsencode(tmp_path), NOT_UTF8 + b".jpg")
    with open(odd, "wb") as fh:
        fh.write(jpeg(5))
    listing = list_inputs([os.fsdecode(odd), str(tmp_path / "missing.jpg")])
    assert [os.fsencode(listing.full_path(i)) for i in listing.items][0] == odd
    assert [i.error for i in listing.items] == [None, "file not found"]


def test_a_weights_file_that_never_ends_is_one_line_not_a_hang(tmp_path):
    """``-w /proc/self/pagemap`` (a 'regular' file of size 0 that reads forever) and a FIFO: refused before any read."""
    from embedder.backbones.registry import sha256_file

    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    with pytest.raises(FeaturebankError, match="is not a regular file"):
        sha256_file(str(fifo))
    if os.path.exists("/proc/self/pagemap"):
        with pytest.raises(FeaturebankError, match="is empty"):
            sha256_file("/proc/self/pagemap")
    good = tmp_path / "ok.pth"
    good.write_bytes(b"abc")
    assert sha256_file(str(good)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# -- weights files that are no checkpoint, manifests that are not CSV, class names, crafted preprocessing ---------
class _OpensMarker:
    """Unpickling this opens (creates) the marker file: what an attacker's pickle would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_weights_file_that_is_no_safe_checkpoint_is_one_line_without_torchs_advice_or_warnings(tmp_path):
    """Random bytes, a pickle that would run code, a checkpoint cut in half: torch's message (cut mid-sentence,
    advising weights_only=False) and its pickle-protocol warning used to reach the user."""
    import pickle
    import warnings

    import torch
    from click.testing import CliRunner

    import cli
    from embedder.backbones.registry import head_classes, load_backbone

    marker = tmp_path / "marker"
    (tmp_path / "rand.pth").write_bytes(np.random.default_rng(0).bytes(5000))
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"state_dict": {"fc.weight": _OpensMarker(marker)}}, fh, protocol=4)  # torch warns of protocol 4
    whole = _checkpoint(tmp_path / "whole.pth", _resnet18_state(torch.zeros(3, 512)))
    with open(whole, "rb") as fh:
        data = fh.read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    says = {
        "rand.pth": "not a PyTorch checkpoint featurebank can read safely",
        "evil.pth": "not a PyTorch checkpoint featurebank can read safely",
        "cut.pth": "damaged, or not a PyTorch checkpoint (PytorchStreamReader failed reading zip archive",
    }
    for name, said in says.items():
        path = str(tmp_path / name)
        for call in (lambda p=path: load_backbone("resnet18", p), lambda p=path: head_classes("resnet18", p)):
            with warnings.catch_warnings(record=True) as shown:
                warnings.simplefilter("always")
                with pytest.raises(FeaturebankError) as caught:
                    call()
            message = str(caught.value)
            assert message.startswith(f"cannot read weights file {path}: {said}"), message
            assert "\n" not in message and "weights_only=False" not in message and "weights_only` set" not in message
            assert not shown, [str(w.message) for w in shown]
        cache = tmp_path / f"{name}.h5"
        args = ["extract", str(tmp_path / "images"), "-b", "resnet18", "-w", path, "--cache", str(cache)]
        (tmp_path / "images").mkdir(exist_ok=True)
        photo(1, (40, 32)).save(tmp_path / "images" / "a.jpg")
        result = CliRunner().invoke(cli.main, args)
        assert result.exit_code == 1 and result.stderr.strip().splitlines() == [f"Error: {message}"], result.output
        assert not cache.exists()
    assert not marker.exists()
    assert load_backbone("resnet18", whole).model.fc.weight.shape == (3, 512)  # a whole checkpoint still loads


MANIFESTS = {
    "a row of more fields than the header": ("path,label\na.jpg,ants\nb.jpg,bees,x\n", "line 3: 3 field(s) where"),
    "a quote never closed": ('path,label\na.jpg,ants\n"b.jpg,bees\nc.jpg,ants\n', "line 3: not valid CSV (a quote"),
    "a last line cut short": ("path,label\na.jpg,ants\nb.jpg", "line 3: 1 field(s) where the header names 2"),
    "a quote never closed, path only": ('path\na.jpg\n"b.jpg\nc.jpg\n', "line 3: not valid CSV (a quote"),
    "a group's quote closed lines later": (
        'path,label,group\na.jpg,ants,"g1\nb.jpg,ants,g2\nc.jpg,bees,g3"\nd.jpg,bees,g4\n',
        "line 2: its group holds a line break (a quote opened there and closed on line 4?)",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_manifest_row_that_is_not_the_headers_fields_is_one_line_and_nothing_is_written(tmp_path, case):
    """Each used to be read silently: a label shifted, the rest of the file one path, a row left unlabeled."""
    text, said = MANIFESTS[case]
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        photo(len(name), (40, 32)).save(tmp_path / name)
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(FeaturebankError, match=rf"^{manifest} {re.escape(said)}"):
        embedder.extract(str(manifest), str(tmp_path / "m.h5"), **FAST)
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.parts").exists()


def test_every_documented_manifest_form_still_reads(tmp_path):
    """A path column alone (unlabeled), path,label,group in any order, an empty label or group, blank lines,
    a quoted path with a comma or a line break."""
    from embedder.inputs.sources import list_manifest

    forms = {
        "path\na.jpg\n\nb.jpg\n": [("a.jpg", "", ""), ("b.jpg", "", "")],
        "label,path,group\nants,a.jpg,p1\n\r\n,b.jpg,\n": [("a.jpg", "ants", "p1"), ("b.jpg", "", "")],
        'path,label\n"a,1.jpg",ants\n"b\n2.jpg",bees\n  ,  \n': [("a,1.jpg", "ants", ""), ("b\n2.jpg", "bees", "")],
        "\ufeffPath,Label\r\na.jpg,ants\r\n": [("a.jpg", "ants", "")],
        # a spreadsheet's empty trailing cells, and a row without its group (docs/cross-validation.md: "only some
        # rows have one"): nothing shifts, read as before the strict reading
        "path,label\na.jpg,ants,\nb.jpg,bees,,\n": [("a.jpg", "ants", ""), ("b.jpg", "bees", "")],
        "path,label,group\na.jpg,ants,p1\nb.jpg,bees\n": [("a.jpg", "ants", "p1"), ("b.jpg", "bees", "")],
    }
    for n, (text, items) in enumerate(forms.items()):
        manifest = tmp_path / f"m{n}.csv"
        manifest.write_text(text, newline="")
        assert [(i.path, i.label, i.group) for i in list_manifest(str(manifest)).items] == items, text


def test_class_names_that_differ_only_in_case_are_a_note_and_still_extracted(tmp_path):
    from embedder.inputs.sources import list_manifest, note_case_twins
    from embedder.kernel.errors import Note

    for i, folder in enumerate(("ants", "Ants", "bees")):
        (tmp_path / "images" / folder).mkdir(parents=True)
        photo(i, (40, 32)).save(tmp_path / "images" / folder / f"{i}.jpg")
    with pytest.warns(
        Note, match=r"images: classes 'Ants' \(1 image\(s\)\) and 'ants' \(1 image\(s\)\) differ only in case"
    ):
        embedder.extract(str(tmp_path / "images"), str(tmp_path / "c.h5"), **FAST)
    assert sorted(CacheReader(str(tmp_path / "c.h5")).classes) == ["Ants", "ants", "bees"]
    manifest = tmp_path / "images" / "m.csv"
    manifest.write_text("path,label\nants/0.jpg,ants\nAnts/1.jpg,Ants\nbees/2.jpg,bees\n")
    with pytest.warns(Note, match=r"m\.csv: classes 'Ants' .* and 'ants' .* differ only in case"):
        note_case_twins(list_manifest(str(manifest)))
    manifest.write_text("path,label\nants/0.jpg,ants\nbees/2.jpg,bees\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        note_case_twins(list_manifest(str(manifest)))


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("crop", 100000, "crop 100000 is not a whole number of pixels from 1 to 4096"),
        ("resize", 10**9, "resize 1000000000 is not a whole number of pixels"),
        ("std", [0.2, 0.0, 0.2], "std (0.2, 0.0, 0.2) is not three finite numbers above 0"),
        ("std", [0.2, -1, 0.2], "std (0.2, -1, 0.2) is not three finite numbers above 0"),
        ("mean", [0.5, 0.5], "mean (0.5, 0.5) is not three finite numbers"),
        ("mean", [0.5, "NaN", 0.5], "mean (0.5, 'NaN', 0.5) is not three finite numbers"),
    ],
)
def test_a_model_files_crafted_preprocessing_is_one_line_before_anything_is_allocated(tmp_path, field, value, says):
    """A crop of 100,000 px in a model file's settings used to make predict ask for 60 GB and be killed."""
    import json
    import zipfile

    from helpers import synthetic_cache

    from classifiers import modelfile
    from classifiers.bundle import load_bundle, train

    synthetic_cache(tmp_path / "c.h5", counts=(6, 6), dim=8)
    train(str(tmp_path / "c.h5"), classifier="logreg", layer="flatten", out=str(tmp_path / "m.fbmodel"))
    with zipfile.ZipFile(tmp_path / "m.fbmodel") as archive:
        parts = {n: archive.read(n) for n in archive.namelist()}
    meta = json.loads(parts[modelfile.META])
    meta["settings"]["preprocessing"][field] = value
    parts[modelfile.META] = json.dumps(meta).encode()
    crafted = tmp_path / "crafted.fbmodel"
    with zipfile.ZipFile(crafted, "w") as archive:
        for n, data in parts.items():
            archive.writestr(n, data)
    with pytest.raises(FeaturebankError) as caught:
        finishes(lambda: load_bundle(str(crafted)), 20)
    message = str(caught.value)
    assert message.startswith(f"{crafted} is not a valid featurebank model file: 'settings': preprocessing {says}")
    assert "\n" not in message
    assert load_bundle(str(tmp_path / "m.fbmodel")).classes  # the file it was made from still loads


def test_extract_refuses_a_crop_or_resize_beyond_the_largest(tmp_path):
    photo(1, (40, 32)).save(tmp_path / "a.jpg")
    for option, value in (("crop", 5000), ("resize", 4097)):  # just over: no test allocates much
        with pytest.raises(
            FeaturebankError, match=rf"^{option} {value} is not a whole number of pixels from 1 to 4096"
        ):
            embedder.extract(str(tmp_path), str(tmp_path / "x.h5"), **{**FAST, option: value})
        assert not (tmp_path / "x.h5").exists()
    assert Preprocessing(resize=4096, crop=4096).crop == 4096


def test_a_cache_whose_settings_are_nested_past_pythons_stack_is_one_line_in_extract(tmp_path):
    """`extract --cache X.h5` over a cache whose settings attribute is [[[[…]]]]: a RecursionError traceback before."""
    import h5py

    photo(1, (40, 32)).save(tmp_path / "a.jpg")
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(tmp_path), cache, **FAST)
    with h5py.File(cache, "a") as f:
        f.attrs["settings"] = "[" * 100_000 + "]" * 100_000
    with pytest.raises(
        FeaturebankError, match=r"c\.h5 is damaged \(attribute 'settings' is nested too deeply to read\)"
    ):
        embedder.extract(str(tmp_path), cache, **FAST)


def test_preprocessing_takes_numpys_numbers_as_pythons():
    """A review's point: the bounds refused np.int64 sizes and np.float32 means a Python caller may pass; they are
    taken, as plain numbers (so that settings stay JSON and compare equal)."""
    p = Preprocessing(resize=np.int64(256), crop=np.int32(224), mean=np.array([0.5, 0.5, 0.5]), std=[0.25] * 3)
    assert (p.resize, p.crop) == (256, 224) and type(p.resize) is int and type(p.crop) is int
    assert p.mean == (0.5, 0.5, 0.5) and all(type(v) is float for v in p.mean) and p.std == (0.25, 0.25, 0.25)
    assert Preprocessing(mean=(0, 0, 0), std=(1, 1, 1)).mean == (0, 0, 0)  # plain values stay as they are
