"""Reading and decoding the samples of shards: a tar member's bytes by its byte range, a Parquet row from its row
group; then exactly what a file goes through (``ImageDataset``: decode, EXIF, preprocessing, failures by index).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .batches import ImageDataset
from .decode import DEFAULT_MAX_PIXELS, Decoded, NotReadable, decode_bytes, max_file_bytes, too_large

ROW_GROUPS_KEPT = 4  # Parquet row groups held in memory per process (threads read them in order)


@dataclass(frozen=True)
class Where:
    """Where a sample's image bytes are: a tar member's byte range, or a Parquet row (row group, row in it)."""

    shard: int  # index in the listing's shards
    offset: int  # tar: first byte of the data; parquet: row group
    length: int  # tar: bytes; parquet: row within the row group


class SampleReader:
    """Reads samples' bytes: ``pread`` of a tar member's range; a Parquet row from its row group, the last few
    row groups kept (decoding threads ask for rows in order). Picklable for decoding processes (each opens its
    own files)."""

    def __init__(self, shards: list[str], columns: dict[int, str]):
        self.shards, self.columns = shards, columns
        self._setup()

    def _setup(self) -> None:
        self._fds: dict[int, int] = {}
        self._groups: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"shards": self.shards, "columns": self.columns}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    def read(self, where: Where, max_bytes: int | None = None) -> bytes | None:
        """A sample's bytes; ``NotReadable`` without reading them when there are more than ``max_bytes`` (the
        bound of a file: no image within the pixel limit is larger)."""
        if where.shard in self.columns:
            return self._row(where, max_bytes)
        if max_bytes is not None and where.length > max_bytes:
            raise NotReadable(too_large(where.length, max_bytes), errno.EFBIG)
        with self._lock:
            fd = self._fds.get(where.shard)
            if fd is None:
                fd = self._fds[where.shard] = os.open(self.shards[where.shard], os.O_RDONLY)
        data = os.pread(fd, where.length, where.offset)
        if len(data) < where.length:
            raise OSError(f"the shard ends {where.length - len(data)} bytes before the end of the member")
        return data

    def _row(self, where: Where, max_bytes: int | None = None) -> bytes | None:
        key = (where.shard, where.offset)
        with self._lock:  # one thread reads a row group while the others wait for it, then all decode in parallel
            column = self._groups.get(key)
            if column is None:
                import pyarrow.parquet as pq

                table = pq.ParquetFile(self.shards[where.shard]).read_row_group(
                    where.offset, columns=[self.columns[where.shard]]
                )
                column = table.column(0).combine_chunks()
                if hasattr(column.type, "get_field_index") and column.type.get_field_index("bytes") >= 0:
                    column = column.field("bytes")  # Hugging Face's Image feature: {"bytes": ..., "path": ...}
                self._groups[key] = column
                while len(self._groups) > ROW_GROUPS_KEPT:
                    self._groups.popitem(last=False)
        value = column[where.length].as_py()
        return bytes(value) if value is not None else None

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._groups.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 (interpreter shutdown: nothing left to tell)
            pass


class SampleDataset(ImageDataset):
    """Samples of shards, decoded and preprocessed exactly as files are (``ImageDataset`` after the bytes)."""

    def __init__(self, where: list[Where], reader: SampleReader, preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(where, preprocessing, max_pixels)
        self.reader = reader

    def decode(self, index: int) -> Decoded:
        try:
            data = self.reader.read(self.images[index], max_file_bytes(self.max_pixels))
        except NotReadable as exc:  # larger than any image within the pixel limit: not read
            return Decoded(None, "", exc.reason)
        except Exception as exc:  # noqa: BLE001 (a shard cut or removed since it was listed, a damaged Parquet page)
            return Decoded(None, "", f"cannot read the sample ({type(exc).__name__}: {exc})")
        if data is None:
            return Decoded(None, "", "no image in the row (the image column is empty)")
        return decode_bytes(data, self.max_pixels, self.preprocessing.draft_size)
