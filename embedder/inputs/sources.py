"""Turn what the user points at (a class-per-folder tree, a flat folder, a CSV manifest, a file list)
into a stable, ordered list of images with labels, groups and file fingerprints.

The order is the order rows take in the cache: sorted paths for folders, the file's order for manifests
and lists. Nothing here opens an image; problems found while listing (a directory named ``x.jpg``, a path in
a manifest that does not exist) become items with an ``error`` so that they are reported like bad images.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import stat
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from embedder.kernel.errors import FileProblem, InvalidValue, MissingFile, Note

from .decode import file_kind

IMAGE_EXTENSIONS = frozenset(
    [".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"]
)
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
LAYOUTS = ("auto", "classes", "flat")
LOOP = "symbolic link loop (too many levels of symbolic links)"


@dataclass(frozen=True)
class Item:
    """One image of the input. ``path`` is relative to the listing's root when it lies inside it."""

    path: str
    label: str = ""
    group: str = ""
    size: int = -1
    mtime_ns: int = -1
    error: str | None = None


@dataclass
class Listing:
    root: str  # absolute folder that relative paths start from
    kind: str  # "classes", "flat", "csv" or "list"
    source: str  # what the user named, made absolute: identifies the input of a cache
    items: list[Item] = field(default_factory=list)
    ignored: int = 0  # files that are not images (by extension), hidden and system files

    def full_path(self, item: Item) -> str:
        return os.path.join(self.root, item.path)

    @property
    def labeled(self) -> bool:
        return any(item.label for item in self.items)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_hidden_or_system(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def _stat_item(full: str, path: str, label: str = "", group: str = "") -> Item:
    try:
        st = os.stat(full)
    except FileNotFoundError:
        return Item(path, label, group, error="file not found")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Item(path, label, group, error=LOOP)
        return Item(path, label, group, error=f"cannot read: {exc.strerror or exc}")
    except ValueError as exc:  # a NUL byte in the path
        return Item(path, label, group, error=f"not a valid path ({exc})")
    if stat.S_ISDIR(st.st_mode):
        return Item(path, label, group, st.st_size, st.st_mtime_ns, error="is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would hang the reader, /dev/zero would never end
        return Item(
            path,
            label,
            group,
            st.st_size,
            st.st_mtime_ns,
            error=f"not a regular file ({file_kind(st.st_mode)}): only regular files are read",
        )
    return Item(path, label, group, st.st_size, st.st_mtime_ns)


def _is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, False for a link that loops or points nowhere (``is_dir`` raises on a loop)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_images(
    top: str, root: str, label: str, listing: Listing, fence: str | None = None, seen: set | None = None
) -> None:
    """Add the images below ``top`` (recursively, sorted) to ``listing`` with ``label``.

    Symbolic links: a file link is read as the file it points to; a folder link is walked only when its target
    lies inside ``fence`` (the class folder, or the root of a flat folder) and was not walked already, else it
    is reported with its reason (a folder link out of the class would put another class's images under this
    label); a link that loops is reported. Nothing is ever walked twice, so nothing loops."""
    fence = fence or os.path.realpath(top)
    seen = seen if seen is not None else {os.path.realpath(top)}
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as exc:
        raise FileProblem(f"cannot read folder {top}: {exc.strerror or exc}") from None
    base = os.path.relpath(top, root).replace(os.sep, "/")  # once per folder: relpath per file was half a rerun
    for entry in entries:
        if is_hidden_or_system(entry.name):
            listing.ignored += 1
            continue
        rel = entry.name if base == "." else f"{base}/{entry.name}"
        link = entry.is_symlink()
        if link and not os.path.exists(entry.path) and _loops(entry.path):
            listing.items.append(Item(rel, label, error=LOOP))
        elif is_image_name(entry.name):
            listing.items.append(_stat_item(entry.path, rel, label))
        elif _is_dir(entry):
            target = os.path.realpath(entry.path)
            if link and not _inside(target, fence):
                listing.items.append(
                    Item(
                        rel,
                        label,
                        error=f"folder link that leaves its {'class ' if label else ''}"
                        f"folder (to {target}): not followed",
                    )
                )
            elif target in seen:
                listing.items.append(
                    Item(rel, label, error=f"folder link to a folder listed already ({target}): not followed")
                )
            else:
                seen.add(target)
                _walk_images(entry.path, root, label, listing, fence, seen)
        else:
            listing.ignored += 1


def _loops(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _has_images_below(folder: str) -> bool:
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden_or_system(d)]
        if any(is_image_name(f) and not is_hidden_or_system(f) for f in filenames):
            return True
    return False


def list_folder(folder: str, layout: str = "auto") -> Listing:
    """Class-per-folder (labels from the first-level folder names) or flat (unlabeled, recursive)."""
    root = os.path.abspath(folder)
    if layout not in LAYOUTS:
        raise InvalidValue(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    subdirs = sorted(
        e.name for e in os.scandir(root) if _is_dir(e) and not is_hidden_or_system(e.name) and not is_image_name(e.name)
    )
    if layout == "auto":
        layout = "classes" if any(_has_images_below(os.path.join(root, d)) for d in subdirs) else "flat"
    listing = Listing(root=root, kind=layout, source=f"{layout}:{root}")
    if layout == "flat":
        _walk_images(root, root, "", listing)
        return listing
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if is_hidden_or_system(entry.name):
            listing.ignored += 1
        elif entry.name in subdirs:  # the class folder itself may be a link: its images are this class's
            _walk_images(entry.path, root, entry.name, listing)
        elif entry.is_symlink() and _loops(entry.path):
            listing.items.append(Item(entry.name, error=LOOP))
        elif is_image_name(entry.name):  # a loose file, or a directory named like an image
            item = _stat_item(entry.path, entry.name)
            listing.items.append(
                item
                if item.error
                else Item(
                    item.path,
                    size=item.size,
                    mtime_ns=item.mtime_ns,
                    error="not inside a class folder (use --layout flat to embed it unlabeled)",
                )
            )
        else:
            listing.ignored += 1
    return listing


def _confined(full: str, root: str, where: str, path: str) -> None:
    """``confine``: refuse a path that leaves the list's folder, by ``..``, an absolute path or a symbolic link."""
    real, top = os.path.realpath(full), os.path.realpath(root)
    if not _inside(real, top) or not _inside(os.path.normpath(full), root):
        raise InvalidValue(f"{where}: {path} is outside the folder of the list ({root}), which --confine refuses")


def csv_rows(csv_path: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` for each row of the CSV file at ``csv_path`` (``read_text``), the header first; ``line``:
    where the row starts. Read strictly: a quote never closed would read the rest of the file as one field (the
    labels after it silently gone), and a quote closed lines later would read the rows between as one field: both
    are one line naming where the quote opened, as is any other malformed CSV. Only a ``path`` cell may hold a line
    break (a file name may); a label, a group or any other cell that does is such a quote."""
    reader = csv.reader(io.StringIO(read_text(csv_path), newline=""), strict=True)
    start = 1
    names: list[str] | None = None
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if names is None:
                names = [c.strip().lower() for c in cells]
            elif reader.line_num > line:  # the row ran over more than one line
                for i, cell in enumerate(cells):
                    column = names[i] if i < len(names) else f"field {i + 1}"
                    if column != "path" and ("\n" in cell or "\r" in cell):
                        raise FileProblem(
                            f"{csv_path} line {line}: its {column} holds a line break (a quote opened there and "
                            f"closed on line {reader.line_num}?): only a path may hold one"
                        )
            yield line, cells
    except csv.Error as exc:
        if "end of data" in str(exc):  # the rest of the file read as one field: say where it started
            raise FileProblem(
                f"{csv_path} line {start}: not valid CSV (a quote opened there is never closed)"
            ) from None
        raise FileProblem(f"{csv_path} line {reader.line_num}: not valid CSV ({exc})") from None


def list_manifest(csv_path: str, confine: bool = False) -> Listing:
    """A CSV with a header naming ``path`` and optionally ``label`` and ``group``; paths relative to the CSV.
    ``confine``: a path outside the CSV's folder is refused (by default any path is read, as a shell would). A row
    of more or fewer fields than the header (a comma not quoted, a line cut short) and a quote never closed are one
    line naming the file and line, as ``--labels`` says them: read as they are, they would shift or drop labels."""
    csv_path = os.path.abspath(csv_path)
    root = os.path.dirname(csv_path)
    listing = Listing(root=root, kind="csv", source=f"csv:{csv_path}")
    rows = csv_rows(csv_path)
    header = next(rows, (1, []))[1]
    fields = [f.strip().lower() for f in header]
    if "path" not in fields:
        raise InvalidValue(
            f"{csv_path}: the first line must name the columns, with at least 'path' "
            f"(and optionally 'label', 'group'); found {header}"
        )
    seen: dict[str, int] = {}
    for line, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if len(cells) > len(fields) and not any(c.strip() for c in cells[len(fields) :]):
            cells = cells[: len(fields)]  # a spreadsheet's empty trailing cells (a.jpg,cat,): nothing shifts
        if len(cells) < len(fields) and not {"path", "label"} & set(fields[len(cells) :]):
            cells = cells + [""] * (len(fields) - len(cells))  # a row without its group: as an empty one
        if len(cells) != len(fields):
            hint = (
                "a path or label with a comma must be quoted"
                if len(cells) > len(fields)
                else "a line cut short? an empty field still needs its comma"
            )
            raise InvalidValue(
                f"{csv_path} line {line}: {len(cells)} field(s) where the header names {len(fields)} ({hint})"
            )
        row = dict(zip(fields, cells))
        path = row["path"].strip()
        if not path:
            continue
        full = os.path.normpath(os.path.join(root, path))
        if confine:
            _confined(full, root, f"{csv_path} line {line}", path)
        rel = os.path.relpath(full, root).replace(os.sep, "/") if not os.path.isabs(path) else full
        if rel in seen:
            raise InvalidValue(f"{csv_path} line {line}: {path} is listed twice (first on line {seen[rel]})")
        seen[rel] = line
        listing.items.append(_stat_item(full, rel, (row.get("label") or "").strip(), (row.get("group") or "").strip()))
    return listing


def note_case_twins(listing: Listing) -> None:
    """A ``Note`` for each class written two ways that differ only in case or Unicode form (folders ``ants`` and
    ``Ants``): they are two classes, compared exactly, which may be meant but is more often a slip."""
    counts: dict[str, int] = {}
    for item in listing.items:
        if item.label:
            counts[item.label] = counts.get(item.label, 0) + 1
    forms: dict[str, list[str]] = {}
    for name in sorted(counts):
        forms.setdefault(unicodedata.normalize("NFC", name).casefold(), []).append(name)
    where = listing.source.split(":", 1)[-1]
    for names in forms.values():
        if len(names) > 1:
            spelled = " and ".join(f"{n!r} ({counts[n]} image(s))" for n in names)
            warnings.warn(
                Note(
                    f"{where}: classes {spelled} differ only in case: they are kept as {len(names)} classes "
                    "(class names are compared exactly; if they are one, write them one way)"
                ),
                stacklevel=2,
            )


def read_text(path: str) -> str:
    """A manifest or list file as text: UTF-8 (with or without a BOM) and no NUL byte, else one line that names
    the line; only a regular file (a FIFO named x.csv would wait forever)."""
    from .decode import NotReadable, read_file

    try:
        data = read_file(path)
    except NotReadable as exc:
        raise FileProblem(f"{path}: {exc.reason}") from None
    except OSError as exc:
        raise FileProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FileProblem(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as "
            f"UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise FileProblem(f"{path} line {line}: a NUL byte, which no file name can hold; is it a text file?")
    return text


def same_files(stored_source: str, stored_root: str, source: str, root: str) -> bool:
    """Whether a cache that mirrors ``stored_source`` (its rows' paths relative to ``stored_root``) may take the
    input ``source`` as the same input: a CSV manifest listing files under the same root, in place of the folder it
    was written from (``featurebank manifest``) or of another manifest (``relabel``'s output), and back. Its rows
    are matched by path (``rebased``): same files, no image embedded again; other labels, labels updated."""
    kinds = {stored_source.split(":", 1)[0], source.split(":", 1)[0]}
    return stored_root == root and "csv" in kinds and kinds <= {"csv", "classes", "flat"}


def rebased(listing: Listing, root: str) -> Listing | None:
    """``listing`` with its paths relative to ``root`` instead of its own root (the names another input's cache
    gave the same files), or None when one of its files lies outside ``root``."""
    if listing.root == root:
        return listing
    items = []
    for item in listing.items:
        full = os.path.normpath(os.path.join(listing.root, item.path))
        if not _inside(full, root):
            return None
        items.append(replace(item, path=os.path.relpath(full, root).replace(os.sep, "/")))
    return replace(listing, root=root, items=items)


def list_paths(paths, root: str | None = None, source: str = "list", confine: bool = False) -> Listing:
    """Unlabeled images given one by one (the command line, a text file with one path a line). ``confine``: a
    path outside ``root`` is refused."""
    root = os.path.abspath(root or os.getcwd())
    listing = Listing(root=root, kind="list", source=source)
    seen = set()
    for n, path in enumerate(paths, start=1):
        full = os.path.normpath(os.path.join(root, os.fspath(path)))
        if confine:
            _confined(full, root, f"{source.split(':', 1)[-1]} path {n}", os.fspath(path))
        rel = os.path.relpath(full, root).replace(os.sep, "/")
        if rel.startswith("../"):
            rel = full
        if rel in seen:
            continue
        seen.add(rel)
        listing.items.append(_stat_item(full, rel))
    return listing


def list_images(source: str, layout: str = "auto", confine: bool = False) -> Listing:
    """Whatever ``source`` is (folder, ``.csv`` manifest, ``.txt`` list of paths), list its images. ``confine``:
    a manifest's or list's paths must stay inside its folder."""
    source = os.fspath(source)
    if os.path.isdir(source):
        listing = list_folder(source, layout)
    elif not os.path.exists(source):
        raise MissingFile(f"input not found: {source}")
    elif source.lower().endswith(".csv"):
        listing = list_manifest(source, confine)
    elif source.lower().endswith((".txt", ".lst")):
        list_file = os.path.abspath(source)
        lines = [
            ln.strip() for ln in read_text(list_file).splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        ]
        listing = list_paths(lines, root=os.path.dirname(list_file), source=f"list:{list_file}", confine=confine)
    else:
        raise InvalidValue(f"{source}: give a folder, a .csv manifest (path,label[,group]) or a .txt list of paths")
    if not listing.items:
        raise InvalidValue(f"no images in {source} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return listing


def list_inputs(inputs, layout: str = "auto") -> Listing:
    """What a command line names: one folder, manifest or list is listed as :func:`list_images` does; image
    files, or several inputs, become one unlabeled list (a missing file is an item with an error, not a stop)."""
    inputs = [os.fspath(i) for i in inputs]
    if not inputs:
        raise InvalidValue("no images given")
    if len(inputs) == 1 and not is_image_name(inputs[0]):
        return list_images(inputs[0], layout)
    paths: list[str] = []
    errors: dict[str, str | None] = {}
    for name in inputs:
        if os.path.isdir(name) or (os.path.isfile(name) and not is_image_name(name)):
            listing = list_images(name, "flat" if os.path.isdir(name) else layout)
            paths += [listing.full_path(item) for item in listing.items]
            errors.update((os.path.abspath(listing.full_path(i)), i.error) for i in listing.items if i.error)
        else:
            paths.append(name)
    full = [os.path.abspath(p) for p in paths]
    key = hashlib.sha256("\n".join(full).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    listing = list_paths(full, root=os.getcwd(), source=f"paths:{key}")
    if errors:  # what listing a folder found (a folder link not followed) stays the reason
        listing.items = [replace(i, error=errors.get(listing.full_path(i), i.error)) for i in listing.items]
    return listing
