"""Peak memory of reading a Parquet file whose cells are large runs of zeros (a few KB with zstd): each row through
the sample reader, as extract's decoding does, in a fresh process per setting (its VmHWM: a forked child's
ru_maxrss would count the parent's). Prints a table (figures in
benchmarks/RESULTS.md and docs/bad-input.md).

    python benchmarks/parquet_cells.py [--mib 192] [--rows 2]

Run it with PYTHONPATH pointing at another checkout to measure that one's reader (the API is the same).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, time
from embedder.kernel.preprocess import Preprocessing
from embedder.inputs.shards import list_input
path, max_pixels = sys.argv[1], int(sys.argv[2])
listing = list_input(path)
dataset = listing.dataset(listing.items, Preprocessing(resize=36, crop=32), max_pixels)
start = time.perf_counter()
reasons = [dataset.decode(i).reason for i in range(len(listing.items))]
took = time.perf_counter() - start
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(peak, round(took, 2), (reasons[0] or "decoded").split(":")[0].replace(" ", "_"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=192, help="MiB of zeros in each cell")
    parser.add_argument("--rows", type=int, default=2, help="rows, all in one row group")
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "zeros.parquet")
        zeros = b"\0" * (args.mib << 20)
        pq.write_table(pa.table({"image": [zeros] * args.rows}), path, compression="zstd")
        del zeros
        size = os.path.getsize(path)
        print(f"{args.rows} cells of {args.mib} MiB of zeros in one row group, zstd: a {size:,}-byte file")
        print()
        print("| --max-pixels | bound per sample | peak RSS of the reading process | seconds | reason |")
        print("|--:|--:|--:|--:|---|")
        for max_pixels in (89_478_485, 2000):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, path, str(max_pixels)], capture_output=True, text=True, check=True
            ).stdout.split()
            bound = 16 * max_pixels + (64 << 20)
            print(f"| {max_pixels:,} | {bound / 2**20:,.0f} MiB | {int(out[0]) / 1e9:.2f} GB | {out[1]} | {out[2]} |")


if __name__ == "__main__":
    main()
