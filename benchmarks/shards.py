"""Shards against files: the same photos read as files and from WebDataset tar shards (and one Parquet file).

    python benchmarks/shards.py --images 240 --per-shard 100

Three measurements, each on the same images, file and shard runs interleaved (the machine may be shared: the
ratios are what to read, the absolute numbers say how loaded it was):
- reading only (bytes into memory): files one by one; this module's way (tar headers listed, then each member
  read by its byte range); ``tarfile`` in stream mode (``r|``); the ``webdataset`` library's tar iterator.
- decoding and preprocessing (the extract pipeline's decoding threads, no model): files vs tar vs Parquet.
- ``extract`` end to end (mobilenet_v2 with ../shared/weights when present, else a random resnet18; engine torch).
Prints a Markdown table; ``--append`` adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import platform
import shutil
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import FLOWERS, HYMENOPTERA, MOBILENET_V2  # noqa: E402

import embedder  # noqa: E402
from embedder.inputs.batches import ImageDataset, ThreadBatches  # noqa: E402
from embedder.inputs.shards import list_input  # noqa: E402
from embedder.kernel.preprocess import Preprocessing  # noqa: E402


def photos(n: int) -> list[pathlib.Path]:
    found = []
    for data in (HYMENOPTERA, FLOWERS):
        if data.exists():
            found += sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not found:
        sys.exit("no shared photos (../shared/data): nothing to measure")
    return found[:n]


def build(work: pathlib.Path, files: list[pathlib.Path], per_shard: int):
    folder, shards = work / "files", work / "shards"
    folder.mkdir()
    shards.mkdir()
    keys = []
    for i, f in enumerate(files):
        key = f"{i:06d}"
        shutil.copyfile(f, folder / f"{key}{f.suffix.lower()}")
        keys.append((key, f))
    for s in range(0, len(keys), per_shard):
        with tarfile.open(shards / f"{s // per_shard:05d}.tar", "w") as tar:
            for key, f in keys[s : s + per_shard]:
                tar.add(f, arcname=f"{key}{f.suffix.lower()}")
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"0"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"key": [k for k, _ in keys], "image": [f.read_bytes() for _, f in keys]}),
        work / "images.parquet",
        row_group_size=per_shard,
    )
    return folder, shards, work / "images.parquet"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def read_files(folder):
    total = 0
    for p in sorted(folder.iterdir()):
        with open(p, "rb") as fh:
            total += len(fh.read())
    return total


def read_ranges(shards):
    listing = list_input(str(shards))
    reader = listing.reader()
    return sum(len(reader.read(listing.where[i.path])) for i in listing.items if not i.error)


def read_stream(shards):
    total = 0
    for shard in sorted(shards.iterdir()):
        with tarfile.open(shard, "r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                total += len(data) if not member.name.endswith(".cls") else 0
    return total


def read_webdataset(shards):
    import webdataset as wds

    urls = [str(s) for s in sorted(shards.iterdir())]
    total = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        total += sum(len(v) for k, v in sample.items() if k in ("jpg", "jpeg", "png"))
    return total


def decode_all(dataset, threads):
    n = 0
    for batch in ThreadBatches(dataset, 32, threads):
        n += len(batch.indices) + len(batch.failures)
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="decoding threads (default: one per core)")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    opts = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="fb-shards-"))
    try:
        files = photos(opts.images)
        folder, shards, parquet = build(work, files, opts.per_shard)
        n = len(files)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        rows = []

        read = {
            "files (open + read each)": lambda: read_files(folder),
            "tar by byte range (featurebank)": lambda: read_ranges(shards),
            "tar stream (tarfile, mode r|)": lambda: read_stream(shards),
        }
        try:
            import webdataset  # noqa: F401

            read["tar, webdataset's iterator"] = lambda: read_webdataset(shards)
        except ImportError:
            pass
        for fn in read.values():  # warm the page cache for all: every reader reads from memory
            fn()
        best = {name: min(timed(fn)[0] for _ in range(3)) for name, fn in read.items()}
        base = best["files (open + read each)"]
        for name, seconds in best.items():
            rows.append(("read bytes", name, n / seconds, base / seconds))

        if MOBILENET_V2.exists():
            model = dict(backbone="mobilenet_v2", weights=str(MOBILENET_V2))
        else:
            model = dict(backbone="resnet18", weights="none")
        prep = Preprocessing(resize=256, crop=224)  # what both backbones' ImageNet weights ask for
        file_set = ImageDataset(sorted(str(p) for p in folder.iterdir()), prep)
        tar_listing, pq_listing = list_input(str(shards)), list_input(str(parquet))
        tar_set = tar_listing.dataset([i for i in tar_listing.items if not i.error], prep)
        pq_set = pq_listing.dataset([i for i in pq_listing.items if not i.error], prep)
        decode = {"files": file_set, "tar shards": tar_set, "parquet": pq_set}
        seconds = {k: [] for k in decode}
        for _ in range(2):  # interleaved: the load of the machine hits all alike
            for name, dataset in decode.items():
                seconds[name].append(timed(lambda d=dataset: decode_all(d, opts.threads))[0])
        base = min(seconds["files"])
        for name in decode:
            rows.append(("decode + preprocess (224 px)", name, n / min(seconds[name]), base / min(seconds[name])))

        rates = {}
        for name, source in (("files", folder), ("tar shards", shards), ("parquet", parquet)):
            summary = embedder.extract(str(source), str(work / f"{name}.h5"), **model, engine="torch")
            rates[name] = summary.images_per_second
        for name, rate in rates.items():
            rows.append((f"extract, {model['backbone']} (engine torch)", name, rate, rate / rates["files"]))

        cpu = platform.processor() or platform.machine()
        table = [
            f"## Shards vs files (`python benchmarks/shards.py --images {opts.images} --per-shard {opts.per_shard}`)",
            "",
            f"{n} shared photos ({megabytes:.1f} MB of JPEG, hymenoptera first) as files, as "
            f"{len(list(shards.iterdir()))} tar shards of {opts.per_shard} and as one Parquet file (row groups of "
            f"{opts.per_shard}); page cache warm; {os.cpu_count()} cores ({cpu}), shared with other jobs: one "
            f"run, read the ratios. Reading: best of 3; decoding: best of 2 interleaved; extract: one run each.",
            "",
            "| step | input | images/s | vs files |",
            "|---|---|--:|--:|",
        ]
        table += [
            f"| {step} | {name} | {rate:,.1f} | {ratio:.2f} |".replace("r|)", "r\\|)")
            for step, name, rate, ratio in rows
        ]
        text = "\n".join(table)
        print(text)
        if opts.append:
            with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
                fh.write("\n<!-- shards.py: begin -->\n" + text + "\n<!-- shards.py: end -->\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
