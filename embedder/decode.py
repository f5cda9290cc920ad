"""File bytes → an RGB PIL image, or the reason it can't be one. Never raises for a bad file.

Every image, whatever its mode (grayscale, palette, RGBA, CMYK, 16-bit), becomes 8-bit RGB the way a person
would expect to see it, with its EXIF orientation applied. The bytes are hashed on the way (the content part
of the cache's fingerprint) so that no file is read twice.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (a 1 GB RGB image in memory)


@dataclass
class Decoded:
    image: object | None  # a PIL image
    digest: str = ""
    reason: str | None = None  # why there is no image


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return digest_bytes(fh.read())


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
    from PIL import Image, ImageOps, UnidentifiedImageError  # imported here: planning a rerun needs no Pillow

    digest = digest_bytes(data)
    if not data:
        return Decoded(None, digest, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                return Decoded(None, digest, f"decompression bomb: {width}x{height} pixels is over the limit of "
                                             f"{max_pixels:,} (raise it with --max-pixels if the image is genuine)")
            if draft_size and im.format == "JPEG":
                im.draft(None, (draft_size, draft_size))
            im.load()
            im = ImageOps.exif_transpose(im)
            return Decoded(to_rgb(im), digest)
    except Image.DecompressionBombError as exc:
        return Decoded(None, digest, f"decompression bomb: {exc}")
    except UnidentifiedImageError:
        return Decoded(None, digest, "not an image file (Pillow cannot identify it)")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        text = str(exc)
        if "truncated" in text:
            return Decoded(None, digest, f"truncated image ({text})")
        return Decoded(None, digest, f"corrupt image ({type(exc).__name__}: {text})")
    except Exception as exc:  # a decoder bug must not stop a run of a million images
        return Decoded(None, digest, f"cannot decode ({type(exc).__name__}: {exc})")


def decode_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Decoded:
    try:
        if os.path.isdir(path):
            return Decoded(None, "", "is a directory, not an image file")
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Decoded(None, "", "file not found")
    except OSError as exc:
        return Decoded(None, "", f"cannot read: {exc.strerror or exc}")
    return decode_bytes(data, max_pixels, draft_size)

