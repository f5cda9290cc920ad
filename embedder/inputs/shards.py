"""WebDataset tar shards and Parquet files as an input: samples (key, image bytes, label, group) instead of files.

A source lists its shards in order and, inside each, its samples sorted by key; each becomes an ``Item`` named
``SHARD/KEY`` (``SHARD`` is the shard's path relative to the folder that holds the shards, with its extension).
From there everything is the pipeline of files: the job plans, decodes in threads or processes, writes parts and
merges; only where the bytes come from differs (``SampleDataset``).

Why offsets rather than a ``tarfile`` stream (``r|``): a plain tar's headers give each member's byte range, so
listing reads the headers only (it seeks over the data), and a sample is then one ``pread`` of its range. Members
are still read in order, never unpacked to disk, and a batch can be read on its own: a resumed run starts in the
middle of a shard without reading its first half, torchrun ranks and decoding processes read only their batches.

Fingerprints: a tar sample's ``size`` is its image member's length and its ``mtime_ns`` the shard's; a Parquet
row has the file's size and mtime. An unchanged shard is therefore reused without reading a byte of it; a
touched one is compared sample by sample by content digest (``item_digest``), as a touched file is.

A damaged shard loses only what the damage covers: a truncated image, a key without an image, a duplicated key,
a member cut by the end of the file, all become failures with a reason; the samples before the damage are kept.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from embedder.inputs.decode import DEFAULT_MAX_PIXELS, digest_bytes, max_file_bytes
from embedder.inputs.samples import Where
from embedder.inputs.sources import (
    IMAGE_EXTENSIONS,
    Item,
    Listing,
    is_hidden_or_system,
    is_image_name,
    list_images,
    list_inputs,
)
from embedder.kernel.errors import InvalidValue, MissingFile
from embedder.kernel.fields import option

SHARD_EXTENSIONS = (".tar", ".parquet")
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp")  # img2dataset's parquet names the column by format
MAX_HEADER_BYTES = 1 << 20  # a pax or GNU long-name header larger than this is damage, not a name
SIDECAR_BYTES = 1 << 20  # a label or group sidecar larger than this is not read
MAX_PATTERN_NAMES = 100_000  # the most names a brace pattern may expand to


@dataclass(frozen=True)
class ShardOptions:
    """Where a sample's image, label and group are: sidecars of a tar sample (``EXT``: the text of ``KEY.EXT``;
    ``json:FIELD``: a field of ``KEY.json``; ``""``: none), columns of a Parquet file (None: ``label`` when the
    file has such a column; the image column: ``image``, else ``jpg``, ``png`` or ``webp``)."""

    image_column: str | None = option(
        None, "Parquet: the column of image bytes (default: image, else jpg, png or webp)."
    )
    label_key: str = option(
        "cls", "Tar shards: the label's sidecar, EXT (the text of KEY.EXT) or json:FIELD (a field of KEY.json)."
    )
    group_key: str = option("", "Tar shards: the group's sidecar, as --label-key.")
    label_column: str | None = option(None, "Parquet: the label column (default: label, when there is one).")
    group_column: str | None = option(None, "Parquet: the group column.")

    def __post_init__(self):
        for name, value in (("--label-key", self.label_key), ("--group-key", self.group_key)):
            if value and not re.fullmatch(r"json:[^:]+|[A-Za-z0-9_.-]+", value):
                raise InvalidValue(f"{name} {value!r}: give a sidecar extension (cls, txt) or json:FIELD")


@dataclass
class ShardListing(Listing):
    shards: list[str] = field(default_factory=list)  # absolute paths, in order
    columns: dict[int, str] = field(default_factory=dict)  # parquet shard → its image column
    where: dict[str, Where] = field(default_factory=dict)  # item path → its bytes
    _digests: Any = field(default=None, repr=False, compare=False)  # the reader of item_digest

    def full_path(self, item: Item) -> str:
        """The shard file that holds the sample (a sample has no file of its own)."""
        return (
            self.shards[self.where[item.path].shard] if item.path in self.where else os.path.join(self.root, item.path)
        )

    def reader(self):
        # reading needs pyarrow for Parquet, decoding needs Pillow: listing needs neither
        from embedder.inputs.samples import SampleReader

        return SampleReader(self.shards, self.columns)

    def dataset(self, items, preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        """The samples ``items``, as a dataset for the decoding pipeline (threads or processes)."""
        from embedder.inputs.samples import SampleDataset

        return SampleDataset([self.where[i.path] for i in items], self.reader(), preprocessing, max_pixels)

    def item_digest(self, item: Item, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
        """The content digest of a sample's image (what the decoder records), to compare with the cache's. One
        reader for all the items of a touched shard: a Parquet row group is read once, not once per row. A sample
        larger than any image within ``max_pixels`` is not read (``NotReadable``, an ``OSError``)."""
        if self._digests is None:
            self._digests = self.reader()
        data = self._digests.read(self.where[item.path], max_file_bytes(max_pixels))
        return digest_bytes(data) if data is not None else ""


# -- what the user names --------------------------------------------------------------------------------------
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_braces(pattern: str) -> list[str]:
    """WebDataset's and img2dataset's ``shards-{00000..00099}.tar`` (the width of the first number is kept)."""
    m = _BRACES.search(pattern)
    if not m:
        return [pattern]
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    return [
        p
        for i in range(lo, hi + 1)
        for p in _expand_braces(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end() :])
    ]


def _pattern_names(pattern: str) -> int:
    """How many names a brace pattern expands to (the product of its ranges), counted before any is made."""
    count = 1
    for m in _BRACES.finditer(pattern):
        count *= max(0, int(m.group(2)) - int(m.group(1)) + 1)
    return count


def is_shard_name(name: str) -> bool:
    return name.lower().endswith(SHARD_EXTENSIONS)


def _is_pattern(name: str) -> bool:
    return bool(_BRACES.search(name)) or glob.has_magic(name)


def _shards_in_folder(folder: str) -> list[str]:
    """The folder's shards: its ``.tar`` files, or, without any, its ``.parquet`` files (img2dataset writes a
    metadata ``.parquet`` beside each ``.tar``: those hold no images)."""
    names = [e.name for e in os.scandir(folder) if e.is_file() and not is_hidden_or_system(e.name)]
    tars = sorted(n for n in names if n.lower().endswith(".tar"))
    chosen = tars or sorted(n for n in names if n.lower().endswith(".parquet"))
    return [os.path.join(folder, n) for n in chosen]


def _has_images(folder: str) -> bool:
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden_or_system(d)]
        if any(is_image_name(f) and not is_hidden_or_system(f) for f in filenames):
            return True
    return False


def _list_file_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]


def shard_paths(source) -> tuple[list[str], str] | None:
    """The shard files ``source`` names (absolute, in order) and its identity, or None when it names no shards
    (an image folder, a manifest, a list of images): a folder of shards, one shard, a glob or brace pattern,
    a ``.txt`` list of shards, or several of these."""
    names = [os.fspath(s) for s in source] if isinstance(source, (list, tuple)) else [os.fspath(source)]
    found: list[str | None] = []  # None: a name that is not shards
    for name in names:
        if _is_pattern(name) and not os.path.exists(name):
            count = _pattern_names(name)
            if count > MAX_PATTERN_NAMES:
                raise InvalidValue(
                    f"{name}: the brace pattern expands to {count:,} names, more than the {MAX_PATTERN_NAMES:,} "
                    f"at most that a pattern may name; list the shards in a .txt file (one a line) instead"
                )
            matches = sorted({m for p in _expand_braces(name) for m in glob.glob(p)})
            if not matches:
                raise MissingFile(f"no files match {name}")
            found += [m for m in matches if is_shard_name(m)] or [None]
        elif is_shard_name(name):
            found.append(name)
        elif os.path.isdir(name):
            shards = _shards_in_folder(name)
            found += shards if shards and not _has_images(name) else [None]
        elif name.lower().endswith((".txt", ".lst")) and os.path.isfile(name):
            lines = _list_file_lines(name)
            base = os.path.dirname(os.path.abspath(name))
            if lines and all(is_shard_name(ln) for ln in lines):
                found += [os.path.join(base, ln) for ln in lines]
            else:
                found.append(None)
        else:
            found.append(None)
    if all(f is None for f in found):
        return None
    if any(f is None for f in found):
        raise InvalidValue("give either shards (.tar, .parquet) or images, not both in one extract")
    paths = list(dict.fromkeys(os.path.abspath(f) for f in found if f))  # once each, in the order given
    if len(names) == 1:
        identity = os.path.abspath(names[0])
    else:
        identity = "list-" + hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return paths, identity


def list_input(source, layout: str = "auto", options: ShardOptions | None = None, confine: bool = False) -> Listing:
    """What ``extract`` was given, listed: shards (``list_shards``), else a folder, manifest or list of images
    (``sources``); several image inputs become one unlabeled list."""
    named = shard_paths(source)
    if named is not None:
        return list_shards(named[0], named[1], options or ShardOptions())
    if isinstance(source, (list, tuple)):
        return list_inputs(source, layout) if len(source) > 1 else list_images(source[0], layout, confine)
    return list_images(source, layout, confine)


def list_shards(paths: list[str], identity: str, options: ShardOptions) -> ShardListing:
    """Every sample of every shard, shard by shard (in the order given), by key within a shard."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingFile(
            f"shard not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    image_column = options.image_column
    source = f"shards:{identity}" + (f"#image={image_column}" if image_column else "")
    listing = ShardListing(root=root, kind="shards", source=source, shards=list(paths))
    for index, path in enumerate(paths):
        name = os.path.relpath(path, root).replace(os.sep, "/")
        if path.lower().endswith(".parquet"):
            _list_parquet(listing, index, name, options)
        else:
            _list_tar(listing, index, name, options)
    if not listing.items:
        raise InvalidValue(f"no samples in the shards of {identity}")
    return listing


def split_key(name: str) -> tuple[str, str] | None:
    """WebDataset's rule: the key is the member's path up to the first dot of its file name, the rest (lower
    case) the extension: ``a/b.seg.png`` → (``a/b``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class SidecarError(ValueError):
    """A sidecar that cannot be a label or group; its text is the reason."""


def _sidecar_value(spec: str, members: dict, read) -> str:
    """A label or group from a sidecar: ``EXT`` (its text) or ``json:FIELD``; "" when the sample has none.
    ``SidecarError`` for a sidecar that cannot be one (larger than ``SIDECAR_BYTES``, nested too deep, a NUL)."""
    if not spec:
        return ""
    ext = "json" if spec.startswith("json:") else spec.lower()
    if ext not in members:
        return ""
    span = members[ext]
    if span[1] > SIDECAR_BYTES:
        raise SidecarError(f"{span[1]:,} bytes, more than the {SIDECAR_BYTES:,} a label or group may take")
    text = read(span).decode("utf-8")
    if ext == "json":
        try:
            data = json.loads(text)
        except RecursionError:
            raise SidecarError("nested too deep to be read") from None
        value = data.get(spec[5:]) if isinstance(data, dict) else None
        text = "" if value is None else str(value)
    text = text.strip()
    if "\0" in text:
        raise SidecarError("a NUL byte, which the cache cannot store")
    if "\n" in text or "\r" in text:  # "ants\nbees" would be one class of two lines in every table
        raise SidecarError(f"{len(text.splitlines())} lines where a label or group is one")
    return text


def _number(field: bytes) -> int:
    """A tar header's number: octal text, or base-256 (GNU) when the first byte's high bit is set (negative when
    it is 0xff). Any size: whether it fits the file is the scan's question."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


_DIGITS = re.compile(rb"[0-9]{1,20}")  # a record's length
_NUMBER = re.compile(rb"[0-9]{1,100}")  # a number record's value (a size past the file is the scan's to say)
PAX_NUMBERS = ("size",)  # the records whose value is read as a number


def _pax_records(data: bytes) -> dict[str, str]:
    """A pax header's records (``LENGTH KEY=VALUE\n``), each checked: a length that is no number, that does not
    cover its own text or runs past the header, a record without ``=`` or its newline, a ``size`` that is not a
    decimal number: ``ValueError`` with what is wrong (a record of length 0 used to loop forever)."""
    records, at = {}, 0
    while at < len(data) and data[at : at + 1] != b"\0":
        space = data.find(b" ", at, at + 22)
        if space < 0 or not _DIGITS.fullmatch(data[at:space]):
            raise ValueError(f"a record at byte {at} does not start with its length")
        length = int(data[at:space])
        if length <= space - at + 2 or at + length > len(data):
            raise ValueError(f"a record at byte {at} declares a length of {length}, which does not fit")
        body = data[space + 1 : at + length]
        key, equals, value = body[:-1].partition(b"=")
        if not body.endswith(b"\n") or not equals or not key:
            raise ValueError(f"a record at byte {at} is not KEY=VALUE and a newline")
        text = key.decode("utf-8", "surrogateescape")
        if text in PAX_NUMBERS and not _NUMBER.fullmatch(value):
            raise ValueError(f"its {text} record {value[:40]!r} is not a decimal number")
        records[text] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def scan_tar(fh, file_size: int) -> tuple[list[tuple[str, int, int, bool]], str | None]:
    """The members of a plain tar (ustar, GNU, pax): (name, offset of the data, size, is a regular file), and
    what stopped the scan early, if anything. Reads the 512-byte headers only (``tarfile`` parses each header
    field by field: ten times slower, which a rerun over a million samples would feel) and seeks over the data.
    Never raises for a damaged file: the members before the damage are returned."""
    members: list[tuple[str, int, int, bool]] = []
    offset, pending, long_name = 0, {}, None
    while True:
        fh.seek(offset)
        block = fh.read(512)
        if not block:
            return members, f"the file ends at byte {offset} without the end-of-archive blocks"
        if len(block) < 512:
            return members, f"truncated member header at byte {offset}"
        if not block.strip(b"\0"):
            return members, None
        try:
            stored = _number(block[148:156])
            size = _number(block[124:136])
        except ValueError:
            stored, size = -1, 0
        if stored != sum(block[:148]) + 256 + sum(block[156:]):
            return members, f"unreadable member header at byte {offset}"
        kind, data = block[156:157], offset + 512
        if size < 0:
            return members, f"unreadable member header at byte {offset} (a negative size)"
        if kind in (b"x", b"g", b"L", b"K"):  # a pax or GNU header that describes the next member
            if data + size > file_size:
                return members, f"truncated member header at byte {offset}"
            if size > MAX_HEADER_BYTES:
                return members, f"unreadable member header at byte {offset} (an extended header of {size:,} bytes)"
            fh.seek(data)
            payload = fh.read(size)
            if kind == b"x":
                try:
                    pending = _pax_records(payload)
                except ValueError as exc:
                    return members, f"unreadable pax header at byte {offset} ({exc})"
            elif kind == b"L":
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            offset = data + (size + 511) // 512 * 512
            continue
        name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if block[257:262] == b"ustar" and block[345:346] != b"\0" and block[262:263] == b"\0":  # POSIX prefix
            name = block[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
        name = pending.get("path") or long_name or name
        name = name.rstrip("/") if kind == b"5" else name  # a directory, as tarfile names it
        size = int(pending.get("size", size))
        members.append((name, data, size, kind in (b"0", b"\0", b"7") and not name.endswith("/")))
        pending, long_name = {}, None
        if data + size > file_size:  # a size that lies (2^80, 1e20) or a file cut short: nothing follows it
            return members, (
                f"the member at byte {offset} declares {size:,} bytes, past the end of the file ({file_size:,} bytes)"
            )
        offset = data + (size + 511) // 512 * 512


def _list_tar(listing: ShardListing, index: int, name: str, options: ShardOptions) -> None:
    path = listing.shards[index]
    st = os.stat(path)
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    duplicated: set[str] = set()
    try:
        with open(path, "rb") as fh:
            members, damage = scan_tar(fh, st.st_size)
    except OSError as exc:
        members, damage = [], f"cannot read: {exc.strerror or exc}"
    if not members:
        listing.items.append(
            Item(
                name,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                error=f"not a readable tar shard ({damage or 'no members'})",
            )
        )
        return
    with_nul: list[tuple[int, str]] = []  # (header byte, name) of members whose name holds a NUL
    not_files: dict[str, str] = {}  # key -> the member named as an image that is a link, a FIFO or a device
    for member, offset, size, is_file in members:
        if "\0" in member:
            with_nul.append((offset - 512, member))
            continue
        named = split_key(member)
        if not is_file and named is not None and named[1] in IMAGE_EXTS:  # a hard link GNU tar wrote, a symlink
            samples.setdefault(named[0], {})
            not_files.setdefault(named[0], member)
            continue
        split = named if is_file else None
        if split is None or any(is_hidden_or_system(p) for p in member.split("/")):
            listing.ignored += is_file
            continue
        key, ext = split
        found = samples.setdefault(key, {})
        if ext in found:
            duplicated.add(key)
        found[ext] = (offset, size)
    cut = {k for k, m in samples.items() if any(o + n > st.st_size for o, n in m.values())}
    last = next(reversed(samples), None)  # the sample the damage, if any, comes after
    cut_short = damage is not None and last is not None and not any(e in IMAGE_EXTS for e in samples[last])

    def damaged(key: str) -> str | None:
        if key in not_files and not any(e in IMAGE_EXTS for e in samples[key]):
            return (
                f"{not_files[key]} is a link or a special file in the shard, not an image's bytes (tar links are not "
                f"followed: write the shard with the files themselves, e.g. tar --hard-dereference)"
            )
        if key in duplicated:
            return f"duplicated key: {key} appears more than once in the shard; no copy is embedded"
        if key in cut:
            return f"truncated shard: {key}'s members run past the end of the file ({st.st_size} bytes)"
        if cut_short and key == last:
            seen = ", ".join(f"{key}.{e}" for e in sorted(samples[key]))
            return f"truncated shard: the damage ({damage}) comes before this sample's image (members: {seen})"
        return None

    with open(path, "rb") as side:  # the sidecars that hold labels and groups

        def read(span):
            side.seek(span[0])
            return side.read(span[1])

        for key in sorted(samples):
            _add_sample(
                listing, Where(index, 0, 0), name, key, samples[key], st.st_mtime_ns, options, read, damaged(key)
            )
    attributed = bool(cut) or cut_short  # else the damage is the shard's own failure
    problems = []
    if damage is not None and not attributed:  # between samples: those before it are whole; say where it stops
        problems.append(
            f"truncated shard: it stops after {len(samples)} samples ({damage}); the samples before the damage are kept"
        )
    if with_nul:
        problems.append(_nul_names("member name", [f"at byte {at} ({n!r})" for at, n in with_nul]))
    if problems:  # the shard's own failure, under its name
        listing.items.append(Item(name, size=st.st_size, mtime_ns=st.st_mtime_ns, error="; ".join(problems)))


def _nul_names(what: str, where: list[str]) -> str:
    more = f" and {len(where) - 1} more" if len(where) > 1 else ""
    return f"a {what} with a NUL byte, which no file name and no cache can hold: not embedded ({where[0]}{more})"


def _add_sample(
    listing: ShardListing,
    shard: Where,
    name: str,
    key: str,
    members: dict,
    mtime_ns: int,
    options: ShardOptions,
    read,
    error: str | None,
) -> None:
    """One sample's item: its image's byte range, label and group, or why it has none."""
    images = sorted(e for e in members if e in IMAGE_EXTS)
    if error is None and not images:
        error = "no image in the sample (members: " + ", ".join(f"{key}.{e}" for e in sorted(members)) + ")"
    elif error is None and len(images) > 1:
        error = "several images in one sample (" + ", ".join(f"{key}.{e}" for e in images) + ")"
    label = group = ""
    if error is None:
        try:
            label = _sidecar_value(options.label_key, members, read)
            group = _sidecar_value(options.group_key, members, read)
        except SidecarError as exc:
            error = f"unreadable label or group sidecar ({exc})"
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            error = f"unreadable label or group sidecar ({type(exc).__name__}: {exc})"
    size, path = -1, f"{name}/{key}"
    if error is None:
        offset, size = members[images[0]]
        listing.where[path] = Where(shard.shard, offset, size)
    listing.items.append(Item(path, label, group, size, mtime_ns, error))


def _list_parquet(listing: ShardListing, index: int, name: str, options: ShardOptions) -> None:
    import pyarrow.parquet as pq

    path = listing.shards[index]
    st = os.stat(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ... for a damaged file)
        listing.items.append(
            Item(
                name,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                error=f"not a readable Parquet file ({type(exc).__name__}: {exc})",
            )
        )
        return
    columns = pf.schema_arrow.names
    image = options.image_column or next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image is None or image not in columns:
        raise InvalidValue(
            f"{path} has no image column {options.image_column or 'image'!r} (its columns: "
            f"{', '.join(columns)}); name it with --image-column"
        )
    for flag, column in (("--label-column", options.label_column), ("--group-column", options.group_column)):
        if column and column not in columns:
            raise InvalidValue(f"{path} has no column {column!r} ({flag}); its columns: {', '.join(columns)}")
    label_column = options.label_column or ("label" if "label" in columns and image != "label" else None)
    wanted = [c for c in dict.fromkeys(("key", label_column, options.group_column)) if c and c in columns]
    table = pf.read(columns=wanted) if wanted else None
    n = pf.metadata.num_rows
    values = {c: table.column(c).to_pylist() for c in wanted} if table is not None else {}
    null_keys: set[int] = set()
    if "key" in values:
        null_keys = {r for r, k in enumerate(values["key"]) if k is None}  # not "", which a real key may be
        keys = ["" if k is None else str(k) for k in values["key"]]
    else:
        width = max(6, len(str(max(n - 1, 0))))
        keys = [str(i).zfill(width) for i in range(n)]
    starts, at = [], 0
    for g in range(pf.metadata.num_row_groups):
        starts.append(at)
        at += pf.metadata.row_group(g).num_rows
    listing.columns[index] = image
    counts: dict[str, int] = {}
    for row, k in enumerate(keys):
        if row not in null_keys:
            counts[k] = counts.get(k, 0) + 1
    group_of, g = [], 0
    for row in range(n):
        while g + 1 < len(starts) and starts[g + 1] <= row:
            g += 1
        group_of.append(g)

    def text(column, row):
        """A label or group cell as text: a float column's whole numbers without ".0" (pandas writes a label
        column with a missing value as floats), NaN and null as no label."""
        v = values[column][row] if column else None
        if v is None or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    done: set[str] = set()
    with_nul = [row for row in range(n) if "\0" in keys[row]]
    for row in sorted(range(n), key=lambda r: (keys[r], r)):
        key = keys[row]
        item_path = f"{name}/{key}"
        if "\0" in key:
            continue
        if row in null_keys:
            item_path = f"{name}/(row {row}: null key)"  # each its own entry: not one "" shared with a real key
            error = f"row {row} has no key (null)"
        elif counts[key] > 1:
            if key in done:
                continue
            done.add(key)
            error = f"duplicated key: {key} is in {counts[key]} rows of the file; no copy is embedded"
        elif not key:
            error = f"row {row} has an empty key"
        elif "\0" in text(label_column, row) + text(options.group_column, row):
            error = f"row {row}'s label or group holds a NUL byte, which the cache cannot store"
        elif any(c in text(label_column, row) + text(options.group_column, row) for c in "\n\r"):
            error = f"row {row}'s label or group holds a line break (a label is one line)"
        else:
            error = None
            listing.where[item_path] = Where(index, group_of[row], row - starts[group_of[row]])
        listing.items.append(
            Item(
                item_path,
                text(label_column, row) if not error else "",
                text(options.group_column, row) if not error else "",
                st.st_size,
                st.st_mtime_ns,
                error,
            )
        )
    if with_nul:
        error = _nul_names("key", [f"row {r}" for r in with_nul])
        listing.items.append(Item(name, size=st.st_size, mtime_ns=st.st_mtime_ns, error=error))
