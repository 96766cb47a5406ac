"""Every source ``open_images`` returns keeps the ImageSource contract: ``labels`` (known without decoding)
agree with the labels the images come with, ``name_of`` names each image, and only streams are read in order.
A user's own object works with or without the optional members."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vision_sae_lens.contracts import ImageSource, StreamedImageSource
from vision_sae_lens.data import open_images


def _folder(root):
    rng = np.random.default_rng(0)
    for cls in ("b", "a"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    Image.new("RGB", (6, 6)).save(root / "loose.png")  # directly under the root: no class
    return root


def _hf_dataset(n=6):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(n)]
    return datasets.Dataset.from_dict(
        {"image": images, "label": [i % 2 for i in range(n)]}, features=features
    )


class Digits:
    """A user's dataset with every optional member."""

    label_names = ["zero", "one"]

    def __init__(self):
        self.labels = [1, 0, 1]

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return Image.new("L", (4, 4), i), self.labels[i]

    def name_of(self, i):
        return f"digit-{i}"

    @property
    def description(self):
        return {"kind": "digits", "count": 3}


class Bare:
    """A user's dataset with only len and getitem (bare images, no labels)."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return Image.new("RGB", (4, 4))


def _sources(tmp_path):
    paths = sorted((_folder(tmp_path / "imgs")).rglob("*.png"))
    return {
        "imagefolder": open_images(tmp_path / "imgs"),
        "paths": open_images(paths),
        "pil": open_images([Image.new("RGB", (4, 4))] * 2),
        "hf": open_images(_hf_dataset()),
        "stream": open_images(_hf_dataset().to_iterable_dataset(), limit=4),
        "demo": open_images("demo:mnist:test"),
        "synthetic": open_images("synthetic:shapes:test"),
        "subset": open_images("demo:mnist:test", limit=30),
        "user": open_images(Digits()),
        "bare": open_images(Bare()),
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return _sources(tmp_path_factory.mktemp("sources"))


@pytest.mark.parametrize(
    "kind", ["imagefolder", "paths", "pil", "hf", "stream", "demo", "synthetic", "subset", "user", "bare"]
)
def test_every_source_keeps_the_contract(sources, kind):
    source = sources[kind]
    assert isinstance(source, ImageSource)
    assert isinstance(source, StreamedImageSource) == (kind == "stream")
    shown = range(min(len(source), 40))
    decoded = [source[i][1] for i in shown]
    if source.labels is not None:  # known without decoding: must be the labels the images come with
        assert [source.labels[i] for i in shown] == decoded
    assert all(isinstance(source.name_of(i), str) and source.name_of(i) for i in shown)
    assert isinstance(source.description, dict) and source.description["count"] == len(source)


def test_labels_known_without_decoding_where_they_can_be(sources):
    assert sources["imagefolder"].labels == [0, 0, 0, 1, 1, 1, None]  # sorted: a/, b/, then loose.png
    assert sources["hf"].labels == [0, 1, 0, 1, 0, 1]
    assert sources["user"].labels == [1, 0, 1] and sources["user"].label_names == ["zero", "one"]
    assert sources["user"].name_of(2) == "digit-2" and sources["user"].description["kind"] == "digits"
    for unknown in ("paths", "pil", "stream", "synthetic", "bare"):
        assert sources[unknown].labels is None, unknown
    assert sources["bare"].name_of(1) == "image[1]" and sources["bare"][1][1] is None
    subset = sources["subset"]
    assert subset.name_of(0) == sources["demo"].name_of(subset.indices[0])
