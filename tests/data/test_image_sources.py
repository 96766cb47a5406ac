"""Image sources: folders with labels, lists, HF datasets (map-style and streamed), the demo digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vision_sae_lens.data import open_images
from vision_sae_lens.errors import ImageInputError


def write_folder(root, n_per_class=3):
    rng = np.random.default_rng(0)
    for cls in ("b_cat", "a_dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "a_dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_labels_order_and_portable_description(tmp_path):
    src = open_images(f"imagefolder:{write_folder(tmp_path / 'imgs')}")
    assert len(src) == 6 and src.label_names == ["a_dog", "b_cat"]
    assert [src[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert src.name_of(3) == "b_cat/0.png" and src[3][0].size == (8, 8)
    desc = json.dumps(src.description)
    assert str(tmp_path) not in desc and src.description["classes"] == 2
    assert open_images(tmp_path / "imgs").description == src.description  # a plain directory works too


def test_corrupt_file_raises_image_input_error_naming_it(tmp_path):
    root = write_folder(tmp_path / "imgs")
    (root / "a_dog" / "zz.jpg").write_bytes(b"garbage")
    src = open_images(root)
    with pytest.raises(ImageInputError, match="zz.jpg"):
        src[src.files.index("a_dog/zz.jpg")]


def test_lists_of_paths_and_pil_images(tmp_path):
    root = write_folder(tmp_path / "imgs")
    paths = sorted(root.rglob("*.png"))
    src = open_images(paths)
    assert len(src) == 6 and src[0][1] is None and src.label_names is None
    assert str(tmp_path) not in json.dumps(src.description)
    pil = open_images([Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(3)])
    other = open_images([Image.new("RGB", (4, 4), (i, 1, 0)) for i in range(3)])
    assert len(pil) == 3 and pil.description["pixels_sha256"] != other.description["pixels_sha256"]
    assert len(open_images(paths, limit=2)) == 2
    with pytest.raises(ImageInputError):
        open_images(tmp_path / "nope")


def test_hf_dataset_from_disk_and_streamed(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(5)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, 1]}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    src = open_images(f"hf-disk:{tmp_path / 'ds'}")
    assert len(src) == 5 and src.label_names == ["x", "y"] and src[1][1] == 1
    assert np.array_equal(np.asarray(src[2][0]), np.asarray(images[2]))
    assert src.description["kind"] == "hf-disk" and str(tmp_path) not in json.dumps(src.description)
    streamed = open_images(ds.to_iterable_dataset(), limit=4)
    assert len(streamed) == 4
    got = list(streamed.iter_range(1, 3))
    assert [i for i, _ in got] == [1, 2] and got[0][1][1] == 1
    assert np.array_equal(np.asarray(got[1][1][0]), np.asarray(images[2]))
    with pytest.raises(ImageInputError, match="limit"):
        open_images(ds.to_iterable_dataset())


def test_demo_digits():
    src = open_images("demo:mnist:test")
    img, label = src[0]
    assert img.mode == "L" and img.size == (28, 28) and 0 <= label <= 9
    assert src.label_names == [str(d) for d in range(10)] and src.description["name"] == "demo:mnist"
    with pytest.raises(ImageInputError, match="demo"):
        open_images("demo:cifar")


def test_limit_is_a_seeded_stratified_draw_not_the_first_images():
    from vision_sae_lens.data import redraw_subset, select_images, source_labels

    full = open_images("demo:mnist:train")
    labels = np.asarray(source_labels(full))
    assert (np.diff(labels) >= 0).all()  # the shipped digits are sorted by class: first-N is one class
    sub = open_images("demo:mnist:train", limit=500)
    got = np.asarray([sub[i][1] for i in range(len(sub))])
    want = np.bincount(labels, minlength=10) * 500 / len(full)
    assert np.abs(np.bincount(got, minlength=10) - want).max() < 1  # every class keeps its share
    assert sub.description["subset"]["seed"] == 0 and sub.description["subset"]["stratified"]
    again = open_images("demo:mnist:train", limit=500)
    assert (
        again.indices == sub.indices
        and open_images("demo:mnist:train", limit=500, seed=1).indices != sub.indices
    )
    assert redraw_subset(full, sub.description["subset"]).indices == sub.indices
    with pytest.raises(ImageInputError, match="changed|drawn"):
        redraw_subset(select_images(full, 3999), sub.description["subset"])


def test_limit_on_an_image_folder_keeps_both_classes(tmp_path):
    src = open_images(write_folder(tmp_path / "imgs", n_per_class=5), limit=4)
    assert sorted(src[i][1] for i in range(4)) == [0, 0, 1, 1]
    with pytest.raises(ImageInputError, match="limit"):
        open_images(tmp_path / "imgs", limit=0)
