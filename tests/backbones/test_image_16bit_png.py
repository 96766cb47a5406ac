"""What a 16-bit PNG's values mean: full-scale 0..65535, brought to 8 bits by keeping the high byte.

The references are other people's decoders on real PNG files: torchvision's own PNG decoder followed by its
``to_dtype(uint16 -> uint8, scale=True)``, and PIL's own decoder of a 16-bit *RGB* PNG (which PIL reduces to
8 bits itself). Every one of the 65,536 values is checked, through a file on disk and the backbone's
preprocessing.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png
from torchvision.transforms.v2.functional import to_dtype

from vision_sae_lens.backbones.images import to_model_mode

EVERY_VALUE_HW = np.arange(65536, dtype=np.uint16).reshape(256, 256)


def png_16bit(values_hwc: np.ndarray) -> bytes:
    """A 16-bit PNG (grey for 1 channel, RGB for 3) written from the PNG spec, not by PIL."""
    height, width, channels = values_hwc.shape
    color_type = {1: 0, 3: 2}[channels]
    scanlines = b"".join(b"\x00" + values_hwc[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def grey_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("png16") / "grey16.png"
    path.write_bytes(png_16bit(EVERY_VALUE_HW[..., None]))
    return path


def test_the_file_is_a_real_16_bit_png_holding_every_value(grey_png):
    with Image.open(grey_png) as img:
        assert img.mode == "I;16"
        assert np.array_equal(np.asarray(img), EVERY_VALUE_HW)


def test_16_bit_grey_png_matches_torchvision(grey_png):
    encoded = torch.frombuffer(bytearray(grey_png.read_bytes()), dtype=torch.uint8)
    decoded = decode_png(encoded, ImageReadMode.UNCHANGED)
    assert decoded.dtype == torch.uint16
    want = to_dtype(decoded, torch.uint8, scale=True)[0].numpy()
    with Image.open(grey_png) as img:
        got = np.asarray(to_model_mode(img, channels=1))
    assert np.array_equal(got, want)


def test_16_bit_grey_png_matches_pil_decoding_the_same_picture_as_16_bit_rgb(tmp_path, grey_png):
    rgb_path = tmp_path / "rgb16.png"
    rgb_path.write_bytes(png_16bit(np.repeat(EVERY_VALUE_HW[..., None], 3, axis=2)))
    with Image.open(rgb_path) as rgb:
        assert rgb.mode == "RGB"  # PIL reduces a 16-bit RGB PNG to 8 bits itself
        want = np.asarray(rgb.convert("RGB"))
    with Image.open(grey_png) as grey:
        got = np.asarray(to_model_mode(grey, channels=3))
    assert np.array_equal(got, want)


def test_mode_I_reads_as_16_bit_and_clips_outside_its_range():
    values = np.array([[-5, 0, 255, 256, 65535, 70000]], dtype=np.int32)
    img = Image.fromarray(values, mode="I")
    assert np.asarray(to_model_mode(img, channels=1)).tolist() == [[0, 0, 0, 1, 255, 255]]


def test_a_16_bit_png_path_preprocesses_like_its_8_bit_reference(tiny_model, grey_png):
    reference = Image.fromarray((EVERY_VALUE_HW >> 8).astype(np.uint8), mode="L")
    assert torch.equal(tiny_model.preprocess([grey_png]), tiny_model.preprocess([reference]))
