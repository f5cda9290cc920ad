"""Classify a folder of images with a `featurebank export` file. Needs onnxruntime, numpy and Pillow only.

python classify_folder.py model.onnx photos/        # prints path, class, score per image
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
prep, classes = meta["preprocessing"], meta["classes"]
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def pixels(path):  # decode, shorter side to `resize`, center crop (zero padding if smaller): as featurebank does
    im, r, c = Image.open(path), prep["resize"], prep["crop"]
    if prep["draft"] and im.format == "JPEG":
        im.draft(None, (r, r))  # big JPEGs decode at 1/2, 1/4 or 1/8 scale
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    w, h = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    im = im.resize((w, h), FILTERS[prep["interpolation"]]) if (w, h) != im.size else im
    left = int(round((w - c) / 2)) if w >= c else -((c - w) // 2)
    top = int(round((h - c) / 2)) if h >= c else -((c - h) // 2)
    return np.asarray(im.crop((left, top, left + c, top + c)), dtype=np.uint8)  # c x c x 3


files = sorted(p for p in pathlib.Path(sys.argv[2]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
for start in range(0, len(files), 32):
    batch = files[start : start + 32]
    scores, labels = session.run(["scores", "label"], {"images": np.stack([pixels(p) for p in batch])})
    for path, s, k in zip(batch, scores, labels):
        print(f"{path},{classes[k]},{s[k]:.4f}")
