"""WebDataset tar shards and Parquet files as inputs: the rows and vectors of the folder extraction of the same
images, every bad sample recorded with its reason, reruns by shard, a kill in the middle of a shard resumed."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from helpers import FAST, FAST_ARGS, HYMENOPTERA, ROOT, photo

import embedder
from embedder.cache.hdf5 import CacheReader, parts_dir
from embedder.inputs.shards import ShardOptions, list_input, scan_tar, split_key
from embedder.kernel.errors import FeaturebankError

SETTINGS = {**FAST, "engine": "torch"}


def jpeg(image, quality=90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 1_700_000_000) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    tar.addfile(info, io.BytesIO(data))


def write_tar(path, members) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add(tar, name, data)


def samples():
    """(class, key, extension, bytes): 20 shared photos (10 ants, 10 bees) when present (else 20 generated JPEGs in
    their place, so that a clone without ../shared runs the same checks), and 6 synthetic pictures (JPEG and PNG,
    two sizes)."""
    out = []
    for c, cls in enumerate(("ants", "bees")):
        if HYMENOPTERA.exists():
            for f in sorted((HYMENOPTERA / "train" / cls).iterdir())[:10]:
                out.append((cls, f"{cls}_{f.stem.replace('.', '_')}", "jpg", f.read_bytes()))
        else:
            for i in range(10):
                out.append((cls, f"{cls}_gen{i:02d}", "jpg", jpeg(photo(300 + 10 * c + i, (120 + 4 * i, 96)))))
    for i in range(6):
        image = photo(500 + i, (90 + 7 * i, 70 + 5 * i))
        out.append(("synthetic", f"syn{i:02d}", "png" if i % 2 else "jpg", png(image) if i % 2 else jpeg(image)))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same images as a class-per-folder tree and as tar shards and one Parquet file, bad samples added, and
    the folder's extraction (the reference)."""
    tmp = tmp_path_factory.mktemp("shards")
    good = samples()
    truncated = jpeg(photo(77, (160, 120)))
    truncated = truncated[: len(truncated) // 3]
    folder = tmp / "images"
    for cls, key, ext, raw in good + [("synthetic", "syn_truncated", "jpg", truncated)]:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        (folder / cls / f"{key.split('_', 1)[1] if cls != 'synthetic' else key}.{ext}").write_bytes(raw)
    reference = CacheReader(embedder.extract(str(folder), str(tmp / "folder.h5"), **SETTINGS).cache)
    file_of = {key: f"{cls}/{key.split('_', 1)[1] if cls != 'synthetic' else key}.{ext}" for cls, key, ext, _ in good}

    def sample(cls, key, ext, raw):
        return [
            (f"{key}.{ext}", raw),
            (f"{key}.cls", cls.encode()),
            (f"{key}.json", json.dumps({"label": cls, "camera": f"cam{len(key) % 3}"}).encode()),
        ]

    real = [s for s in good if s[0] != "synthetic"]
    synthetic = [s for s in good if s[0] == "synthetic"]
    shards = tmp / "shards"
    shards.mkdir()
    first, second = real[: len(real) // 2], real[len(real) // 2 :]
    write_tar(shards / "00000.tar", [m for s in first for m in sample(*s)])
    write_tar(
        shards / "00001.tar",
        [m for s in second + synthetic[:3] for m in sample(*s)]
        + [
            ("bad_truncated.jpg", truncated),
            ("bad_truncated.cls", b"synthetic"),
            ("bad_noimage.cls", b"ants"),
            ("bad_noimage.json", b"{}"),
            ("bad_dup.jpg", good[0][3]),
            ("bad_dup.cls", b"ants"),
            ("bad_dup.jpg", good[1][3]),
        ],
    )
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, raw in (m for s in synthetic[3:] for m in sample(*s)):
            add(tar, name, raw)
    cut_at = whole.getvalue().index(synthetic[5][3]) + 100  # in the middle of the last image
    (shards / "00002.tar").write_bytes(whole.getvalue()[:cut_at])
    in_shards = {
        **{f"00000.tar/{s[1]}": file_of[s[1]] for s in first},
        **{f"00001.tar/{s[1]}": file_of[s[1]] for s in second + synthetic[:3]},
        **{f"00002.tar/{s[1]}": file_of[s[1]] for s in synthetic[3:5]},
    }
    bad = {
        "00001.tar/bad_truncated": "truncated image",
        "00001.tar/bad_noimage": "no image in the sample",
        "00001.tar/bad_dup": "duplicated key",
        f"00002.tar/{synthetic[5][1]}": "truncated shard",
    }
    return {
        "tmp": tmp,
        "folder": folder,
        "reference": reference,
        "shards": shards,
        "in_shards": in_shards,
        "bad": bad,
        "good": good,
        "truncated": truncated,
        "file_of": file_of,
    }


def assert_same_vectors(cache, data, names: dict, exact: bool = True):
    """Every row of ``cache`` has the folder's vector of the same image, and its label: bit for bit when both were
    embedded in batches of the same size (the reference's 4), else within float32 rounding of other batch sizes."""
    got, ref = CacheReader(cache), data["reference"]
    row_of = {p: i for i, p in enumerate(ref.paths)}
    assert sorted(got.paths) == sorted(names)
    rows = [row_of[names[p]] for p in got.paths]
    if exact:
        assert np.array_equal(got.features(), ref.features()[rows])
    else:
        np.testing.assert_allclose(got.features(), ref.features()[rows], rtol=1e-5, atol=1e-6)
    assert list(got.labels) == [ref.labels[r] for r in rows]


def test_tar_shards_give_the_rows_and_vectors_of_the_folder_and_record_every_bad_sample(data):
    summary = embedder.extract(str(data["shards"]), str(data["tmp"] / "tar.h5"), **SETTINGS)
    assert_same_vectors(summary.cache, data, data["in_shards"])
    got = CacheReader(summary.cache)
    shard_keys = [(p.split("/")[0], p.split("/")[1]) for p in got.paths]
    assert shard_keys == sorted(shard_keys)  # by shard, then by key
    failed = {f["path"]: f["reason"] for f in summary.failed}
    assert sorted(failed) == sorted(data["bad"])
    for path, start in data["bad"].items():
        assert failed[path].startswith(start), (path, failed[path])
    # the truncated JPEG fails for the very reason the same file fails in the folder
    folder_failed = dict(zip(data["reference"].failures["path"], data["reference"].failures["reason"]))
    assert failed["00001.tar/bad_truncated"] == folder_failed["synthetic/syn_truncated.jpg"]
    assert summary.embedded == len(data["in_shards"]) and summary.classes == sorted({c for c, *_ in data["good"]})


def test_a_parquet_file_gives_the_rows_and_vectors_of_the_folder(data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = data["good"]
    keys = [key for _, key, _, _ in good] + ["bad_truncated", "bad_null", "bad_dup", "bad_dup"]
    blobs = [raw for *_, raw in good] + [data["truncated"], None, good[0][3], good[1][3]]
    labels = [cls for cls, *_ in good] + ["synthetic", "ants", "ants", "bees"]
    image = pa.array(
        [None if b is None else {"bytes": b, "path": f"{k}.jpg"} for k, b in zip(keys, blobs)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )  # Hugging Face's Image
    order = np.random.default_rng(0).permutation(len(keys))  # rows in no particular order: sorted by key
    table = pa.table(
        {"key": [keys[i] for i in order], "image": image.take(pa.array(order)), "label": [labels[i] for i in order]}
    )
    folder = data["tmp"] / "parquet"
    folder.mkdir()
    pq.write_table(table, folder / "train.parquet", row_group_size=7)  # several row groups
    summary = embedder.extract(str(folder / "train.parquet"), str(data["tmp"] / "pq.h5"), **SETTINGS)
    assert_same_vectors(summary.cache, data, {f"train.parquet/{k}": data["file_of"][k] for _, k, _, _ in good})
    assert list(CacheReader(summary.cache).paths) == sorted(f"train.parquet/{k}" for _, k, _, _ in good)
    failed = {f["path"]: f["reason"] for f in summary.failed}
    assert sorted(failed) == ["train.parquet/bad_dup", "train.parquet/bad_null", "train.parquet/bad_truncated"]
    assert failed["train.parquet/bad_null"].startswith("no image in the row")
    assert failed["train.parquet/bad_dup"].startswith("duplicated key")
    assert failed["train.parquet/bad_truncated"].startswith("truncated image")
    os.utime(folder / "train.parquet", ns=(1, 1))  # touched, same rows: compared by content, nothing embedded
    again = embedder.extract(str(folder / "train.parquet"), summary.cache, **SETTINGS)
    assert (again.embedded, again.reused, len(again.failed)) == (0, len(good), 3)


def test_a_rerun_embeds_only_new_or_changed_shards(data, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(data["shards"], shards)
    cache = str(tmp_path / "c.h5")
    first = embedder.extract(str(shards), cache, **SETTINGS)
    assert first.embedded == len(data["in_shards"])
    assert embedder.extract(str(shards), cache, **SETTINGS).embedded == 0  # nothing new
    os.utime(shards / "00000.tar", ns=(1, 1))  # touched, same bytes: compared by content, nothing embedded
    again = embedder.extract(str(shards), cache, **SETTINGS)
    assert (again.embedded, again.reused) == (0, len(data["in_shards"]))
    extra = photo(900, (100, 90))
    write_tar(shards / "00003.tar", [("new.jpg", jpeg(extra)), ("new.cls", b"synthetic")])
    # 00001.tar gets another image for one key: only that sample is embedded again
    with tarfile.open(shards / "00001.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    write_tar(
        shards / "00001.tar", [(n, jpeg(photo(901, (90, 90))) if n == "syn02.jpg" else raw) for n, raw in members]
    )
    summary = embedder.extract(str(shards), cache, **SETTINGS)
    assert summary.embedded == 2  # new.jpg and syn02.jpg; the rest of 00001.tar has the same bytes
    assert summary.rows == len(data["in_shards"]) + 1
    gone = shards / "00003.tar"
    gone.unlink()
    assert embedder.extract(str(shards), cache, **SETTINGS).removed == 1


def test_what_extract_accepts_as_shards(data, tmp_path):
    shards = data["shards"]
    by_folder = list_input(str(shards))
    keys = [i.path for i in by_folder.items]
    for source in (
        [str(shards / n) for n in ("00000.tar", "00001.tar", "00002.tar")],  # a shell's glob
        str(shards / "*.tar"),
        str(shards / "{00000..00002}.tar"),
    ):
        listing = list_input(source)
        assert [i.path for i in listing.items] == keys and listing.kind == "shards"
    (tmp_path / "list.txt").write_text("".join(f"{shards}/{n}\n" for n in ("00001.tar", "00000.tar")))
    assert [i.path.split("/")[0] for i in list_input(str(tmp_path / "list.txt")).items][0] == "00001.tar"
    # img2dataset writes a metadata .parquet (no images) beside each .tar: the tars are the shards
    both = tmp_path / "img2dataset"
    both.mkdir()
    shutil.copy(shards / "00000.tar", both / "00000.tar")
    (both / "00000.parquet").write_bytes(b"PAR1")
    assert {i.path.split("/")[0] for i in list_input(str(both)).items} == {"00000.tar"}
    # labels and groups from json:FIELD
    listing = list_input(
        str(shards / "00000.tar"), options=ShardOptions(label_key="json:label", group_key="json:camera")
    )
    assert all(i.label == "ants" and i.group.startswith("cam") for i in listing.items)
    assert {i.label for i in list_input(str(shards / "00000.tar"), options=ShardOptions(label_key="")).items} == {""}
    # an image folder is still an image folder
    assert list_input(str(data["folder"])).kind == "classes"
    with pytest.raises(FeaturebankError, match="either shards"):
        list_input([str(shards / "00000.tar"), str(data["folder"])])
    with pytest.raises(FeaturebankError, match="no files match"):
        list_input(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FeaturebankError, match="--label-key"):
        ShardOptions(label_key="json:")
    assert split_key("a/b.seg.png") == ("a/b", "seg.png") and split_key("README") is None


def test_a_shard_that_is_no_tar_and_a_cut_between_samples_are_failures(tmp_path):
    shards = tmp_path / "s"
    shards.mkdir()
    (shards / "a.tar").write_bytes(b"not a tar at all" * 100)
    members = [("k0.jpg", jpeg(photo(1))), ("k0.cls", b"x"), ("k1.jpg", jpeg(photo(2))), ("k1.cls", b"x")]
    write_tar(shards / "b.tar", members)
    raw = (shards / "b.tar").read_bytes()
    second_header = raw.index(b"k1.jpg")
    (shards / "b.tar").write_bytes(raw[: second_header + 100])  # cut inside the second sample's header
    listing = list_input(str(shards))
    errors = {i.path: i.error for i in listing.items}
    assert errors["a.tar"].startswith("not a readable tar shard")
    assert errors["b.tar/k0"] is None and errors["b.tar"].startswith("truncated shard: it stops after 1 samples")
    assert "truncated member header" in errors["b.tar"]
    damaged = bytearray(raw)
    damaged[second_header + 3] ^= 0xFF  # a header whose checksum no longer matches: the scan stops there
    (shards / "b.tar").write_bytes(bytes(damaged))
    errors = {i.path: i.error for i in list_input(str(shards / "b.tar")).items}
    assert errors["b.tar/k0"] is None and "unreadable member header" in errors["b.tar"] and "b.tar/k1" not in errors


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_header_scan_finds_what_tarfile_finds_and_a_prefix_of_it_when_cut(fmt):
    rng = np.random.default_rng(fmt)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for i in range(40):
            long = fmt != tarfile.USTAR_FORMAT  # long and non-ASCII names: GNU longname, pax path records
            name = (
                ("dir" * 40 + "/") * (i % 3) + f"k\u00e9y{i}." + "x" * (i % 120) + ".jpg"
                if long
                else ("d" * 60 + "/") * (i % 2) + f"k{i}.jpg"
            )
            info = tarfile.TarInfo(name)
            data = rng.bytes(int(rng.integers(0, 3000)))
            info.size, info.mtime = len(data), 1.7e9 + i / 3  # a float mtime: a pax header in PAX_FORMAT
            tar.addfile(info, io.BytesIO(data))
            if i % 10 == 0:
                folder = tarfile.TarInfo(f"sub{i}")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
    raw = out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name, m.offset_data, m.size, m.isfile()) for m in tar]
    assert scan_tar(io.BytesIO(raw), len(raw)) == (expected, None)
    for cut in rng.choice(len(raw), 60, replace=False):
        members, damage = scan_tar(io.BytesIO(raw[:cut]), int(cut))
        assert members == expected[: len(members)]
        ends = expected[-1][1] + expected[-1][2]
        assert (damage is None) == (cut >= (ends + 511) // 512 * 512 + 512)  # whole up to an end block


def test_parquet_without_the_image_column_is_one_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": ["x"], "caption": ["y"]}), tmp_path / "meta.parquet")
    with pytest.raises(FeaturebankError, match="no image column 'image'.*--image-column"):
        list_input(str(tmp_path / "meta.parquet"))
    pq.write_table(pa.table({"key": ["a"], "jpg": [jpeg(photo(3))]}), tmp_path / "img2dataset.parquet")
    listing = list_input(str(tmp_path / "img2dataset.parquet"))  # img2dataset's column is named by format
    assert [i.path for i in listing.items] == ["img2dataset.parquet/a"] and listing.columns == {0: "jpg"}


@pytest.mark.integration
def test_decoding_processes_read_shards_as_threads_do(data, tmp_path):
    summary = embedder.extract(str(data["shards"]), str(tmp_path / "w.h5"), **{**SETTINGS, "workers": 2})
    assert_same_vectors(summary.cache, data, data["in_shards"])


@pytest.mark.integration
def test_kill_9_in_the_middle_of_a_shard_then_resume(data, tmp_path):
    shards = tmp_path / "one"
    shards.mkdir()
    members = [m for cls, key, ext, raw in data["good"] for m in ((f"{key}.{ext}", raw), (f"{key}.cls", cls.encode()))]
    write_tar(shards / "all.tar", members)
    cache = tmp_path / "killed.h5"
    args = [
        sys.executable,
        "-c",
        "import cli; cli.main()",
        "extract",
        str(shards),
        "--cache",
        str(cache),
        "-q",
        *FAST_ARGS,
        "--engine",
        "torch",
    ]
    proc = subprocess.Popen([*args, "--batch-size", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        folder = parts_dir(str(cache))
        if os.path.isdir(folder) and len([n for n in os.listdir(folder) if n.endswith(".h5")]) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len([n for n in os.listdir(parts_dir(str(cache))) if n.endswith(".h5")])
    assert 5 <= kept < len(data["good"])
    done = subprocess.run([*args, "--json"], cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["embedded"] == len(data["good"]) - kept and summary["reused"] == kept
    # batches of 1 (killed) and 32 (resumed) against the reference's 4: the same vectors up to rounding
    assert_same_vectors(cache, data, {f"all.tar/{k}": data["file_of"][k] for _, k, _, _ in data["good"]}, exact=False)
    assert not os.path.exists(parts_dir(str(cache)))


def test_cli_takes_shards_as_a_shell_glob_with_labels_and_groups_from_json(data, tmp_path):
    from click.testing import CliRunner

    import cli

    shards = [str(data["shards"] / n) for n in ("00000.tar", "00001.tar", "00002.tar")]
    cache = tmp_path / "cli.h5"
    result = CliRunner().invoke(
        cli.main,
        [
            "extract",
            *shards,
            "--cache",
            str(cache),
            "--json",
            "--label-key",
            "json:label",
            "--group-key",
            "json:camera",
            *FAST_ARGS,
            "--batch-size",
            "4",
            "--engine",
            "torch",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == len(data["in_shards"]) and len(summary["failed"]) == len(data["bad"])
    assert_same_vectors(cache, data, data["in_shards"])
    reader = CacheReader(cache)
    assert all(g.startswith("cam") for g in reader.rows["group"])
    wrong = CliRunner().invoke(cli.main, ["extract", shards[0], "--label-key", "json:", "--cache", str(cache)])
    assert wrong.exit_code != 0 and "--label-key 'json:'" in wrong.output


@pytest.mark.integration
def test_two_torchrun_ranks_give_the_single_process_rows_of_shards(data, tmp_path):
    single = embedder.extract(str(data["shards"]), str(tmp_path / "single.h5"), **{**SETTINGS, "batch_size": 2})
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cli",
        "extract",
        str(data["shards"]),
        "--cache",
        str(tmp_path / "two.h5"),
        "-q",
        *FAST_ARGS,
        "--engine",
        "torch",
        "--batch-size",
        "2",
    ]
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    got, ref = CacheReader(tmp_path / "two.h5"), CacheReader(single.cache)
    assert list(got.paths) == list(ref.paths) and np.array_equal(got.features(), ref.features())  # bit for bit
    assert list(got.failures["path"]) == list(ref.failures["path"]) and len(got.failures["path"]) == len(data["bad"])


def test_parquet_labels_from_float_columns_nulls_and_line_breaks(tmp_path):
    """pandas writes a label column with a missing value as floats: 1.0 is class '1', NaN no label; a null key is
    its own failure, not one '' shared with a real empty key; a label of two lines is a failure, not a class."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = jpeg(photo(3))
    pq.write_table(
        pa.table(
            {
                "key": ["a", "b", None, "", "e"],
                "image": [image] * 5,
                "label": [1.0, float("nan"), 2.0, 2.0, 3.5],
            }
        ),
        tmp_path / "f.parquet",
    )
    items = {i.path: (i.label, i.error) for i in list_input(str(tmp_path / "f.parquet")).items}
    assert items["f.parquet/a"] == ("1", None) and items["f.parquet/b"] == ("", None)
    assert items["f.parquet/e"] == ("3.5", None)
    assert items["f.parquet/(row 2: null key)"] == ("", "row 2 has no key (null)")
    assert items["f.parquet/"] == ("", "row 3 has an empty key")
    pq.write_table(pa.table({"key": ["a"], "image": [image], "label": ["ants\nbees"]}), tmp_path / "g.parquet")
    (item,) = list_input(str(tmp_path / "g.parquet")).items
    assert item.error == "row 0's label or group holds a line break (a label is one line)" and item.label == ""


def test_a_tar_label_sidecar_of_two_lines_is_a_failure_not_a_class(tmp_path):
    image = jpeg(photo(4))
    write_tar(tmp_path / "s.tar", [("x.jpg", image), ("x.cls", b"ants\nbees"), ("y.jpg", image), ("y.cls", b"ants\n")])
    items = {i.path: (i.label, i.error) for i in list_input(str(tmp_path / "s.tar")).items}
    assert items["s.tar/y"] == ("ants", None)  # a trailing line break is no second line
    assert items["s.tar/x"][1] == "unreadable label or group sidecar (2 lines where a label or group is one)"


def test_tar_members_named_as_images_that_are_links_are_failures_with_their_reason(tmp_path):
    """GNU tar writes a second name of one file as a hard link (no bytes of its own): that sample was dropped
    without a word; it is now a failure that says why, beside the file it links to, embedded."""
    image = jpeg(photo(5))
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "good.jpg", image)
        add(tar, "good.cls", b"ants")
        link = tarfile.TarInfo("hard.jpg")
        link.type, link.linkname = tarfile.LNKTYPE, "good.jpg"
        tar.addfile(link)
        add(tar, "hard.cls", b"ants")
        sym = tarfile.TarInfo("soft.png")
        sym.type, sym.linkname = tarfile.SYMTYPE, "good.jpg"
        tar.addfile(sym)
    items = {i.path: (i.label, i.error) for i in list_input(str(tmp_path / "s.tar")).items}
    assert items["s.tar/good"] == ("ants", None)
    for key, member in (("hard", "hard.jpg"), ("soft", "soft.png")):
        assert items[f"s.tar/{key}"][1].startswith(f"{member} is a link or a special file in the shard, not an image")
