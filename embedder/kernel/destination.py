"""Where a command writes: checked before any work, so that a wrong path costs one line, not a traceback after the
work, and never an input overwritten by an output."""

from __future__ import annotations

import os
import tempfile

from .atomic import special
from .errors import FeaturebankError, FileProblem, InvalidValue


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (hard links, symlinks and ``..`` included); False when either is absent."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b) and os.path.exists(a)


def refuse_overwrite(out: str, inputs, what: str = "the output") -> None:
    """A FeaturebankError when ``out`` is one of ``inputs`` (paths of files the command reads)."""
    for path in inputs:
        if path is not None and os.path.isfile(path) and same_file(out, path):
            raise InvalidValue(
                f"{what} {out} is {path}, an input of this command: it would be overwritten; give another path"
            )


def writable_folder(folder: str, what: str, create: bool = True) -> str:
    """Make ``folder`` (and its parents) and check that a file can be created in it, with a probe file removed at
    once: a read-only folder, a path under a regular file or a full disk is one line naming ``what``. ``create``
    False: nothing is made (a check before the inputs are read); the probe goes into the nearest existing folder."""
    folder = os.path.abspath(folder or ".")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileProblem(f"cannot write {what} in {folder}: it is a file, not a folder")
    try:
        existing = folder
        if create:
            os.makedirs(folder, exist_ok=True)
        else:
            while not os.path.exists(existing) and os.path.dirname(existing) != existing:
                existing = os.path.dirname(existing)
            if not os.path.isdir(existing):
                raise FileProblem(f"cannot write {what} in {folder}: {existing} is a file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=".featurebank-probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except FeaturebankError:  # the refusal above is an OSError too: it passes as it is
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if getattr(exc, "filename", None) and exc.filename != folder else ""
        raise FileProblem(f"cannot write {what} in {folder}: {reason}{where}") from None
    return folder


def file_destination(path: str, inputs=(), what: str = "the output", writes: str = "table") -> str:
    """``check_destination`` for a file written beside and renamed into place (a model file, an ONNX file), which
    cannot be written through: a device or a FIFO there is refused, else the rename would replace it (as root,
    ``/dev/full`` with a regular file)."""
    check_destination(path, inputs, what, writes)
    if special(path):
        raise FileProblem(f"{what} {path} is not a regular file (a device or a FIFO): give a file path")
    return path


IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)  # the sizes of a BMP's second header: "BM" alone starts words too


def is_image_file(path: str) -> bool:
    """Whether ``path`` is a regular file that starts as an image does (JPEG, PNG, GIF, BMP, TIFF, WebP)."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            head = fh.read(18)
    except OSError:
        return False
    if head[:2] == b"BM" and len(head) == 18:
        return int.from_bytes(head[14:18], "little") in BMP_HEADERS
    return head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def featurebank_kind(path: str) -> str | None:
    """What a file featurebank made is, told by its content: ``cache`` (HDF5), ``model`` (a zip holding
    ``featurebank-model.json``), ``checkpoint`` (a PyTorch zip: ``data.pkl`` inside); None for anything else."""
    import zipfile

    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head == HDF5_SIGNATURE:
            return "cache"
        if head[:4] != b"PK\x03\x04":
            return None
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if "featurebank-model.json" in names:
        return "model"
    return "checkpoint" if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names) else None


KIND_NAMES = {"cache": "an HDF5 cache", "model": "a featurebank model file", "checkpoint": "a PyTorch checkpoint"}


def check_destination(path: str, inputs=(), what: str = "the output", writes: str = "table") -> str:
    """``path``, a file to be written (``writes``: ``table``, ``model`` or ``onnx``): not one of ``inputs``, not a
    folder, not an image (featurebank writes tables, models and caches, never an image over one: an output named
    after a photo by a slip of the shell's completion would have destroyed it), not a cache, model file or
    checkpoint unless it writes one of that kind (``train -o`` over its earlier model), in a folder that can be
    written."""
    if os.path.isdir(path):
        raise FileProblem(f"{what} {path} is a folder: give a file name")
    refuse_overwrite(path, inputs, what)
    if is_image_file(path):
        raise InvalidValue(f"{what} {path} is an image: it would be overwritten; give another path")
    kind = featurebank_kind(path)
    if kind is not None and kind != writes:
        raise InvalidValue(f"{what} {path} is {KIND_NAMES[kind]}: it would be overwritten; give another path")
    if special(path):  # -o /dev/stdout: written through (atomic_path(named=True)), its folder never probed
        return path
    # checked, not made: a command refused after this check (a model that cannot be exported) leaves no folder;
    # the writer makes it (atomic_path)
    writable_folder(os.path.dirname(os.path.abspath(path)), f"{what} {os.path.basename(path)}", create=False)
    return path
