"""Decoding: every mode becomes the expected RGB, orientation is applied, bad bytes become reasons."""

import io

import numpy as np
import torch
from helpers import photo, write_bad_files
from PIL import Image
from torchvision.models import ResNet50_Weights

from embedder.inputs.decode import decode_bytes, decode_file
from embedder.kernel.preprocess import Preprocessing


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb_of(data: bytes) -> np.ndarray:
    decoded = decode_bytes(data)
    assert decoded.reason is None, decoded.reason
    assert decoded.image.mode == "RGB"
    return np.asarray(decoded.image)


def test_grayscale_palette_and_rgba_become_rgb():
    gray = Image.new("L", (4, 3), 77)
    assert (rgb_of(encode(gray, "PNG")) == 77).all()
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert (rgb_of(encode(pal, "PNG"))[0, 0] == [10, 200, 30]).all()
    pal.info["transparency"] = 0
    assert (rgb_of(encode(pal, "PNG", transparency=0))[0, 0] == [10, 200, 30]).all()
    rgba = Image.new("RGBA", (4, 3), (5, 6, 7, 0))
    assert (rgb_of(encode(rgba, "PNG"))[0, 0] == [5, 6, 7]).all()


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = rgb_of(encode(cmyk, "JPEG", quality=100))[8, 8].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_16_bit_images_are_scaled_not_clipped_to_white():
    arr = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert rgb_of(data)[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = rgb_of(encode(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)  # portrait after rotation
    assert out[2, 10, 2] > 200 and out[-3, 10, 0] > 200  # blue went to the top, red below


def test_bad_files_give_reasons_and_never_raise(tmp_path):
    expected = write_bad_files(tmp_path)
    for name, start in expected.items():
        decoded = decode_file(str(tmp_path / name))
        assert decoded.image is None and decoded.reason.startswith(start), (name, decoded.reason)
    assert decode_file(str(tmp_path / "missing.jpg")).reason == "file not found"


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")  # a few KB on disk, 9 megapixels in memory
    decoded = decode_bytes(data, max_pixels=1_000_000)
    # over twice the limit Pillow itself refuses it at open (its limit follows ours): the reason counts the pixels
    assert decoded.image is None and decoded.reason.startswith("decompression bomb: 9,000,000 pixels")
    assert decode_bytes(data, max_pixels=5_000_000).reason.startswith("decompression bomb: 3000x3000 pixels")
    assert decode_bytes(data, max_pixels=10_000_000).image.size == (3000, 3000)


def test_digest_is_of_the_bytes():
    a, b = encode(photo(1), "PNG"), encode(photo(2), "PNG")
    assert decode_bytes(a).digest == decode_bytes(a).digest != decode_bytes(b).digest
    assert len(decode_bytes(a).digest) == 32


def test_draft_decodes_big_jpegs_smaller_and_preprocessing_barely_changes():
    data = encode(photo(3, (1024, 768)), "JPEG", quality=95)
    full, draft = decode_bytes(data), decode_bytes(data, draft_size=256)
    assert full.image.size == (1024, 768) and draft.image.size == (512, 384)
    prep = Preprocessing(resize=256, crop=224)
    diff = (prep.to_uint8(full.image).float() - prep.to_uint8(draft.image).float()).abs().mean()
    assert diff < 4.0  # mean absolute difference, in 0..255 levels
    small = encode(photo(3, (400, 300)), "JPEG")
    assert decode_bytes(small, draft_size=256).image.size == (400, 300)  # under 2x: untouched


def test_preprocessing_equals_torchvision_preset():
    preset = ResNet50_Weights.IMAGENET1K_V2.transforms()
    prep = Preprocessing.from_transforms(preset)
    assert (prep.resize, prep.crop, prep.interpolation) == (232, 224, "bilinear")
    im = photo(5, (300, 260))
    ours = prep.normalize(prep.to_uint8(im).unsqueeze(0))[0]
    assert torch.allclose(ours, preset(im), atol=1e-6)
