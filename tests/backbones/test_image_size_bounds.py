"""A tiny file cannot cost gigabytes: an image whose resize would be huge is refused before the transform,
naming the file and its size; PIL's decompression-bomb limit still applies and is reported as an image error."""

from __future__ import annotations

import json

import pytest
from helpers import random_images
from PIL import Image
from ported_helpers import tiny_model

from vision_sae_lens.errors import ImageInputError
from vision_sae_lens.store.recorder import cache_activations

HUGE_AFTER_RESIZE = 10_000_000
"""Pixels no legitimate input reaches once the tiny ViT's transform (shortest edge to 35 px) resized it."""


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def transformed(model, monkeypatch):
    """Sizes of every image that reaches the backbone's transform; a huge one fails the test at once
    (instead of allocating the gigabyte its resize would take)."""
    seen: list[tuple[int, int]] = []
    inner = model.spec.transform

    def guarded(img):
        width, height = img.size
        assert width * height * 35 * 35 / min(width, height) ** 2 < HUGE_AFTER_RESIZE, (
            f"{img.size} reached it"
        )
        seen.append(img.size)
        return inner(img)

    monkeypatch.setattr(model.spec, "transform", guarded)
    return seen


@pytest.fixture
def strip(tmp_path):
    """A real 150000x1 PNG: a few hundred bytes on disk, 5.25M x 35 pixels after the tiny ViT's resize."""
    path = tmp_path / "strip.png"
    Image.new("L", (150_000, 1)).save(path, optimize=True)
    assert path.stat().st_size < 1000
    return path


def test_a_thin_strip_is_refused_before_the_transform_naming_file_and_size(model, transformed, strip):
    for given in (strip, str(strip), [strip]):
        with pytest.raises(ImageInputError, match=r"strip\.png is 150000x1 pixels") as err:
            model.preprocess(given)
        assert "aspect ratio 150000:1" in str(err.value)
    with pytest.raises(ImageInputError, match="150000x1"):
        model.preprocess([Image.open(strip)])
    assert transformed == []
    ordinary = random_images(1, size=(3000, 2000))  # large but ordinary: still fine
    assert model.preprocess(ordinary).shape == (1, 3, 32, 32) and transformed == [(2000, 3000)]


def test_recording_skips_the_strip_and_names_it(model, transformed, strip, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    strip.rename(folder / "strip.png")
    random_images(1)[0].save(folder / "ok.png")
    store = cache_activations(
        model, str(folder), sites=["blocks.0.hook_resid_post"], out_dir=tmp_path / "store", progress=False
    )
    assert store.metadata["n_recorded_images"] == 1
    (skipped,) = store.metadata["skipped"]
    assert skipped["name"] == "strip.png" and skipped["error"].startswith("ImageInputError")
    assert "150000x1" in skipped["error"]
    assert json.loads(json.dumps(store.metadata))["n_skipped"] == 1


def test_pil_decompression_bomb_limit_still_applies(model, tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    random_images(1, size=(100, 100))[0].save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is over twice the limit
    with pytest.raises(ImageInputError, match=r"bomb\.png.*decompression bomb"):
        model.preprocess(path)
