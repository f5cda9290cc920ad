"""File bytes → an RGB PIL image, or the reason it can't be one. Never raises for a bad file.

Every image, whatever its mode (grayscale, palette, RGBA, CMYK, 16-bit), becomes 8-bit RGB the way a person
would expect to see it, with its EXIF orientation applied. The bytes are hashed on the way (the content part
of the cache's fingerprint) so that no file is read twice.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (a 1 GB RGB image in memory)
# No image file within the pixel limit is larger than this many bytes per pixel (32-bit float RGBA, uncompressed)
# plus this much of metadata (EXIF, ICC profiles, thumbnails): a larger file is refused without being read.
BYTES_PER_PIXEL = 16
METADATA_BYTES = 64 << 20
READ_BLOCK = 1 << 20
KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass
class Decoded:
    image: Any  # a PIL image, or None
    digest: str = ""
    reason: str | None = None  # why there is no image
    notes: tuple[str, ...] = ()  # Pillow's warnings about this file (corrupt EXIF data): kept, never printed


# Pillow's warnings while a file is decoded are the file's notes, not lines on stderr (a thousand photos with
# corrupt EXIF data would bury the summary): a hook records those of PIL's modules in the decoding thread.
_notes = threading.local()
_previous_showwarning = None
_PIL_FILE = re.compile(r"[/\\]PIL[/\\]")


def _showwarning(message, category, filename, lineno, file=None, line=None):
    notes = getattr(_notes, "current", None)
    if notes is not None and _PIL_FILE.search(str(filename)):
        if not issubclass(category, _bomb_warning()):  # the refusal says it
            notes.append(" ".join(str(message).split()))
        return
    (_previous_showwarning or warnings._showwarning_orig)(message, category, filename, lineno, file, line)


def _bomb_warning():
    from PIL import Image

    return Image.DecompressionBombWarning


def _record_pil_warnings() -> None:
    """Install the hook, and show every warning of PIL (not once per line of Pillow's code) to it. Checked on
    every decode: ``warnings.catch_warnings`` elsewhere restores what it found, which may predate the hook."""
    global _previous_showwarning
    if warnings.showwarning is not _showwarning:
        _previous_showwarning = warnings.showwarning
        warnings.showwarning = _showwarning
    if not any(f[0] == "always" and f[3] is not None and f[3].pattern == _PIL_MODULES for f in warnings.filters[:8]):
        warnings.filterwarnings("always", module=_PIL_MODULES)


_PIL_MODULES = r"PIL(\.|$)"
_TOO_LARGE = re.compile(r"too large for an image: ([\d,]+) bytes")
_BOMB = re.compile(r"(\d+)x(\d+) pixels|\(?([\d,]+) pixels\)? is over|Image size \(([\d,]+) pixels\)")


def bomb_pixels(reason: str | None) -> int | None:
    """The pixels of an image refused as a decompression bomb, read from its recorded reason."""
    if not reason or not reason.startswith("decompression bomb"):
        return None
    m = _BOMB.search(reason)
    if m is None:
        return None
    if m.group(1):
        return int(m.group(1)) * int(m.group(2))
    return int((m.group(3) or m.group(4)).replace(",", ""))


def fits_now(reason: str | None, size: int, max_pixels: int) -> bool:
    """Whether a file refused for its size (pixels or bytes) is within ``max_pixels`` now: a raised limit
    retries it."""
    if reason and reason.startswith("too large for an image"):
        m = _TOO_LARGE.match(reason)  # the sample's own size (a Parquet row's ``size`` is its file's)
        return 0 <= (int(m.group(1).replace(",", "")) if m else size) <= max_file_bytes(max_pixels)
    pixels = bomb_pixels(reason)
    return pixels is not None and pixels <= max_pixels


class NotReadable(OSError):
    """A file that is not read as an image: not a regular file, or larger than any image within the limits.
    ``reason`` is what the failure records."""

    def __init__(self, reason: str, code: int = errno.EINVAL):
        super().__init__(code, reason)
        self.reason = reason


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def max_file_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The largest file an image within ``max_pixels`` can be."""
    return BYTES_PER_PIXEL * max_pixels + METADATA_BYTES


def file_kind(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO", ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def _open_regular(path: str, max_bytes: int | None):
    """A descriptor of ``path`` when it is a regular file no larger than ``max_bytes``; else ``NotReadable``.
    O_NONBLOCK: opening a FIFO must not wait for a writer (it has no effect on regular files)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        kind = file_kind(st.st_mode)
        if kind == "a directory":
            raise NotReadable("is a directory, not an image file", errno.EISDIR)
        if kind:
            raise NotReadable(f"not a regular file ({kind}): only regular files are read")
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotReadable(too_large(st.st_size, max_bytes), errno.EFBIG)
    except BaseException:
        os.close(fd)
        raise
    return fd


def too_large(size: int, max_bytes: int) -> str:
    return (
        f"too large for an image: {size:,} bytes is more than any image within the pixel limit can be "
        f"({max_bytes:,} bytes; raise it with --max-pixels if the image is genuine)"
    )


def _blocks(fd: int, max_bytes: int | None, first: int = READ_BLOCK):
    """The file's bytes in blocks (the first of ``first`` bytes); ``NotReadable`` as soon as more than
    ``max_bytes`` came (a file that grew since it was looked at)."""
    total = 0
    while True:
        block = os.read(fd, first if not total else READ_BLOCK)
        if not block:
            return
        total += len(block)
        if max_bytes is not None and total > max_bytes:
            raise NotReadable(too_large(total, max_bytes), errno.EFBIG)
        yield block


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` of them (``NotReadable`` otherwise, before reading)."""
    fd = _open_regular(path, max_bytes)
    try:  # the whole file in one read (one copy in memory), then whatever it grew by
        return b"".join(_blocks(fd, max_bytes, os.fstat(fd).st_size + 1))
    finally:
        os.close(fd)


def file_digest(path: str, max_bytes: int | None = None) -> str:
    """The digest ``decode_file`` records, read in blocks (bounded memory); only regular files (``NotReadable``,
    an OSError, for the others)."""
    fd = _open_regular(path, max_bytes)
    try:
        h = hashlib.blake2b(digest_size=16)
        for block in _blocks(fd, max_bytes):
            h.update(block)
        return h.hexdigest()
    finally:
        os.close(fd)


def to_rgb(im):
    """8-bit RGB from any Pillow mode. 16-bit and float images are scaled, not clipped to white."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
            arr = arr.astype(np.float64) / 257.0  # 0..65535 → 0..255
        elif im.mode == "F" and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode == "PA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    return im.convert("RGB")


def decode_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Decoded:
    """Decode ``data``. ``draft_size`` lets JPEG decode at 1/2, 1/4 or 1/8 scale while both sides stay
    at least that large: the same picture after resizing, several times faster on big photos."""
    digest = digest_bytes(data)
    if not data:
        return Decoded(None, digest, "empty file (0 bytes)")
    _record_pil_warnings()
    notes: list[str] = []
    _notes.current = notes
    try:
        decoded = _decode(data, digest, max_pixels, draft_size)
    finally:
        _notes.current = None
    decoded.notes = tuple(dict.fromkeys(notes))
    return decoded


def _decode(data: bytes, digest: str, max_pixels: int, draft_size: int | None) -> Decoded:
    from PIL import Image, ImageOps, UnidentifiedImageError

    # Pillow refuses images over twice its own limit before this module sees their size: its limit follows ours,
    # so that --max-pixels above Pillow's default (179 M pixels) does what it says. The same value from every thread.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        im: Image.Image = Image.open(io.BytesIO(data))
        width, height = im.size
        if width * height > max_pixels:
            return Decoded(None, digest, bomb_reason(f"{width}x{height}", max_pixels))
        if draft_size and im.format == "JPEG":
            im.draft(None, (draft_size, draft_size))
        im.load()
        im = ImageOps.exif_transpose(im)
        return Decoded(to_rgb(im), digest)
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        return Decoded(None, digest, bomb_reason(f"{int(m.group(1)):,}" if m else "too many", max_pixels))
    except UnidentifiedImageError:
        return Decoded(None, digest, "not an image file (Pillow cannot identify it)")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        text = str(exc)
        if "truncated" in text:
            return Decoded(None, digest, f"truncated image ({text})")
        return Decoded(None, digest, f"corrupt image ({type(exc).__name__}: {text})")
    except Exception as exc:  # a decoder bug must not stop a run of a million images
        return Decoded(None, digest, f"cannot decode ({type(exc).__name__}: {exc})")


def bomb_reason(pixels: str, max_pixels: int) -> str:
    return (
        f"decompression bomb: {pixels} pixels is over the limit of {max_pixels:,} (raise it with --max-pixels "
        f"if the image is genuine: a raised limit retries it)"
    )


def decode_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Decoded:
    """Only a regular file is read, and only when it is no larger than an image within ``max_pixels`` can be."""
    try:
        data = read_file(path, max_file_bytes(max_pixels))
    except NotReadable as exc:
        return Decoded(None, "", exc.reason)
    except FileNotFoundError:
        return Decoded(None, "", "file not found")
    except OSError as exc:
        return Decoded(None, "", f"cannot read: {exc.strerror or exc}")
    return decode_bytes(data, max_pixels, draft_size)
