"""Classify a folder of images with a `featurebank export` file. Needs onnxruntime, numpy and Pillow only.

python classify_folder.py model.onnx photos/        # prints path, class, score (and familiarity) per image

A file from a model that keeps training images has a third output, `familiarity`: under 0.01, the image is unlike
the images the model was trained on and its class is a guess whatever its score.
"""

import json
import pathlib
import signal
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

if hasattr(signal, "SIGPIPE"):  # `| head`: stop quietly when the reader has had enough, as a shell tool does
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
prep, classes = meta["preprocessing"], meta["classes"]
OUTPUTS = [o.name for o in session.get_outputs() if o.name in ("scores", "label", "familiarity")]
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
IMAGES = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
}


def rgb(im):  # 8-bit RGB from any mode, as featurebank: 16-bit and float images scaled, not clipped to white
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0
        elif im.mode == "F" and a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "PA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    return im.convert("RGB")


def pixels(path):  # decode, shorter side to `resize`, center crop (zero padding if smaller): as featurebank does
    im, r, c = Image.open(path), prep["resize"], prep["crop"]
    if prep["draft"] and im.format == "JPEG":
        im.draft(None, (r, r))  # big JPEGs decode at 1/2, 1/4 or 1/8 scale
    im.load()
    im = rgb(ImageOps.exif_transpose(im))
    w, h = im.size
    w, h = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    im = im.resize((w, h), FILTERS[prep["interpolation"]]) if (w, h) != im.size else im
    left = int(round((w - c) / 2)) if w >= c else -((c - w) // 2)
    top = int(round((h - c) / 2)) if h >= c else -((c - h) // 2)
    return np.asarray(im.crop((left, top, left + c, top + c)), dtype=np.uint8)  # c x c x 3


files = sorted(p for p in pathlib.Path(sys.argv[2]).rglob("*") if p.suffix.lower() in IMAGES)
for start in range(0, len(files), 32):
    batch = files[start : start + 32]
    outputs = session.run(OUTPUTS, {"images": np.stack([pixels(p) for p in batch])})
    for path, s, k, *familiarity in zip(batch, *outputs):
        print(f"{path},{classes[k]},{s[k]:.4f}" + "".join(f",{f:.4g}" for f in familiarity))
