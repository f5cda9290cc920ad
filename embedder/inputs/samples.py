"""Reading and decoding the samples of shards: a tar member's bytes by its byte range, a Parquet row from its row
group; then exactly what a file goes through (``ImageDataset``: decode, EXIF, preprocessing, failures by index).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .batches import ImageDataset
from .decode import DEFAULT_MAX_PIXELS, Decoded, NotReadable, decode_bytes, max_file_bytes, too_large

ROW_GROUPS_KEPT = 4  # Parquet row groups held in memory per process (threads read them in order)
GROUP_BYTES = 256 << 20  # a Parquet row group whose image column declares more is streamed a row at a time
CELL_OVERHEAD = 64 << 10  # what a column chunk of one cell declares besides the cell (page headers, levels)


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
        """A Parquet row's image bytes. Bounded before anything is materialized where the metadata allows: a row
        group of one row whose image column declares more than ``max_bytes`` is refused unread; a row group
        declaring more than ``GROUP_BYTES`` is streamed a row at a time instead of read whole; dictionary pages
        stay a dictionary (two rows of one 384 MiB value are not two copies of it); and a cell's length is
        checked on the buffer, before it is copied out."""
        key = (where.shard, where.offset)
        with self._lock:  # one thread reads a row group while the others wait for it, then all decode in parallel
            column = self._groups.get(key)
            if column is None:
                column = self._open_group(where, max_bytes)
                self._groups[key] = column
                while len(self._groups) > ROW_GROUPS_KEPT:
                    self._groups.popitem(last=False)
            value = column.row(where.length) if isinstance(column, _Stream) else column[where.length]
        if isinstance(value, NotReadable):
            raise value
        buffer = _cell_buffer(value)
        if buffer is None:
            return None
        if max_bytes is not None and buffer.size > max_bytes:
            raise NotReadable(too_large(buffer.size, max_bytes), errno.EFBIG)
        return buffer.to_pybytes()

    def _open_group(self, where: Where, max_bytes: int | None):
        import pyarrow.parquet as pq

        path, name = self.shards[where.shard], self.columns[where.shard]
        meta = pq.ParquetFile(path).metadata.row_group(where.offset)
        leaves = [meta.column(i) for i in range(meta.num_columns)]
        declared = sum(
            c.total_uncompressed_size
            for c in leaves
            if c.path_in_schema == name or c.path_in_schema.startswith(name + ".")
        )
        if max_bytes is not None and meta.num_rows == 1 and declared > max_bytes + CELL_OVERHEAD:
            return [NotReadable(too_large(declared, max_bytes), errno.EFBIG)]  # the only cell: no larger than that
        flat = _is_binary(pq.ParquetFile(path).schema_arrow.field(name).type)
        pf = pq.ParquetFile(path, read_dictionary=[name] if flat else None)
        refused: dict[int, NotReadable] = {}
        if max_bytes is not None and declared > max_bytes:  # some page may be larger than any image: which rows
            chunk = next(c for c in leaves if c.path_in_schema in (name, name + ".bytes"))
            refused = _oversized_rows(path, chunk, meta.num_rows, max_bytes)
            if len(refused) == meta.num_rows:
                return [refused[r] for r in range(meta.num_rows)]
        if declared > GROUP_BYTES or refused:
            return _Stream(pf, where.offset, name, refused)
        return pf.read_row_group(where.offset, columns=[name]).column(0)

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


def _is_binary(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)


def _cell_buffer(value):
    """The bytes of a cell (a binary scalar, a dictionary's entry, Hugging Face's ``{"bytes", "path"}``) as an
    Arrow buffer, without copying them; None for an empty cell."""
    import pyarrow as pa

    if isinstance(value, pa.DictionaryScalar) and value.is_valid:
        value = value.value
    if isinstance(value, pa.StructScalar) and value.is_valid:
        value = value["bytes"]  # Hugging Face's Image feature
    if value is None or not value.is_valid:
        return None
    return value.as_buffer()


class _Stream:
    """A large row group read a row at a time (one Parquet page and one cell in memory, not the whole group);
    rows asked in order, as the decoding threads ask for them (an earlier row starts the stream again). Rows in
    ``refused`` are answered with their refusal, unread."""

    def __init__(self, pf, group: int, column: str, refused: dict | None = None):
        self.pf, self.group, self.column, self.refused = pf, group, column, refused or {}
        self.batches: Any = None  # started when a row is first read
        self.at, self.current = -1, None

    def _start(self) -> None:
        self.batches = self.pf.iter_batches(batch_size=1, row_groups=[self.group], columns=[self.column])
        self.at, self.current = -1, None

    def row(self, index: int):
        if index in self.refused:
            return self.refused[index]
        if self.batches is None or index < self.at:
            self._start()
        while self.at < index:
            self.current = next(self.batches).column(0)[0]
            self.at += 1
        return self.current


# -- Parquet page headers (Thrift compact protocol): the declared size of each page, read without its data --------
def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 70:
            raise ValueError("a varint of more than 10 bytes")


def _skip(buf: bytes, at: int, kind: int, depth: int) -> int:
    if kind in (1, 2):  # a boolean: in the field header (or one byte in a list, see _skip_element)
        return at
    if kind == 3:
        return at + 1
    if kind in (4, 5, 6):
        return _varint(buf, at)[1]
    if kind == 7:
        return at + 8
    if kind == 8:
        n, at = _varint(buf, at)
        return at + n
    if kind in (9, 10):
        head = buf[at]
        at += 1
        n, element = head >> 4, head & 0x0F
        if n == 15:
            n, at = _varint(buf, at)
        for _ in range(n):
            at = _skip_element(buf, at, element, depth)
        return at
    if kind == 11:
        n, at = _varint(buf, at)
        if n:
            types = buf[at]
            at += 1
            for _ in range(n):
                at = _skip_element(buf, _skip_element(buf, at, types >> 4, depth), types & 0x0F, depth)
        return at
    if kind == 12:
        return _struct(buf, at, depth + 1)[1]
    raise ValueError(f"unknown Thrift type {kind}")


def _skip_element(buf: bytes, at: int, kind: int, depth: int) -> int:
    return at + 1 if kind in (1, 2) else _skip(buf, at, kind, depth)


def _struct(buf: bytes, at: int, depth: int = 0) -> tuple[dict, int]:
    """A Thrift compact struct: its integer fields and nested structs by field id; the rest skipped."""
    if depth > 16:
        raise ValueError("structs nested too deep")
    fields: dict = {}
    last = 0
    while True:
        head = buf[at]
        at += 1
        if head == 0:
            return fields, at
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field = last + delta
        else:
            raw, at = _varint(buf, at)
            field = (raw >> 1) ^ -(raw & 1)
        last = field
        if kind in (4, 5, 6):
            raw, at = _varint(buf, at)
            fields[field] = (raw >> 1) ^ -(raw & 1)
        elif kind == 12:
            fields[field], at = _struct(buf, at, depth + 1)
        else:
            at = _skip(buf, at, kind, depth)


PAGE_HEADER_READ = 4096  # bytes read for a page header at first (a header with statistics may need more)


def _page_headers(path: str, start: int, end: int):
    """(kind, uncompressed size, values) of each page of a column chunk, reading the headers only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        at = start
        while at < end:
            size = PAGE_HEADER_READ
            while True:
                buf = os.pread(fd, size, at)
                try:
                    header, length = _struct(buf, 0)
                    break
                except IndexError:
                    if len(buf) < size or size >= 1 << 20:
                        raise ValueError(f"a page header at byte {at} that does not end") from None
                    size *= 16
            kind, uncompressed, compressed = header.get(1), header.get(2, 0), header.get(3, -1)
            if compressed < 0 or uncompressed < 0:
                raise ValueError(f"a page header at byte {at} with a negative size")
            values = (header.get(5) or header.get(7) or header.get(8) or {}).get(1, 0)
            yield kind, uncompressed, values
            at += length + compressed
    finally:
        os.close(fd)


DICTIONARY_PAGE = 2


def _oversized_rows(path: str, chunk, rows: int, max_bytes: int) -> dict[int, NotReadable]:
    """The rows of a row group whose image the page headers of the image column show to be larger than
    ``max_bytes``, each refused unread: those of a data page of one value that declares more, and every row
    when the dictionary page holds a single value that large (every row of the group is that value). A page
    of several values that is larger refuses nothing (which of its values is large is not declared): it is
    streamed, and its cells are checked one by one. Unreadable page headers: nothing is refused here (Arrow's
    own reading then says what is wrong)."""
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    start = start if start is not None else chunk.data_page_offset
    refused: dict[int, NotReadable] = {}
    row = 0
    try:
        for kind, uncompressed, values in _page_headers(path, start, start + chunk.total_compressed_size):
            error = NotReadable(too_large(uncompressed, max_bytes), errno.EFBIG)
            if kind == DICTIONARY_PAGE:
                if uncompressed > max_bytes + CELL_OVERHEAD and values == 1:
                    return dict.fromkeys(range(rows), error)
                continue
            if uncompressed > max_bytes + CELL_OVERHEAD and values == 1:
                refused[row] = error
            row += values
    except (ValueError, IndexError, OSError):
        return {}
    return refused


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
