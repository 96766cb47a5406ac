"""``analyze`` re-opens a store's images only from what a recording can describe: a dataset description
naming an absolute path, '..' or a local folder as a Hub id is refused (pass --images), never read."""

from __future__ import annotations

import datasets
import pytest
from analysis_helpers import SITE, make_sae, noise_images
from helpers import reseal_store

from vision_sae_lens.analysis import build_browser
from vision_sae_lens.errors import UnsafePathError
from vision_sae_lens.store import ActivationStore, cache_activations


@pytest.fixture(scope="module")
def private_ds(tmp_path_factory):
    """A real saved Hugging Face dataset (hf-disk) somewhere the store never pointed to."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": noise_images(4), "label": [0, 1, 0, 1]}, features=features)
    path = tmp_path_factory.mktemp("private") / "private_ds"
    ds.save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def recorded(vit, private_ds):
    """A store recorded from the dataset, beside it (so its own description finds it)."""
    return cache_activations(
        vit, f"hf-disk:{private_ds}", sites=[SITE], out_dir=private_ds.parent / "store", progress=False
    )


def _retargeted(store, tmp_path, dataset: dict) -> ActivationStore:
    """A copy of ``store`` whose description names ``dataset``, every checksum recomputed (as anyone editing
    metadata.json would)."""
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(store.path, copy)
    reseal_store(copy, metadata={"dataset": dataset})
    return ActivationStore(copy)


def test_the_recorded_description_reopens_the_dataset_beside_the_store(vit, recorded, tmp_path):
    assert recorded.dataset["name"] == "private_ds" and recorded.dataset["kind"] == "hf-disk"
    site = build_browser(make_sae(vit), recorded, out_dir=tmp_path / "browser", max_pages=2, progress=False)
    assert "missing-images" not in (site.index.parent / "latents" / f"{site.pages[0]}.html").read_text()


@pytest.mark.parametrize(
    "dataset",
    [
        {"kind": "hf-disk", "name": "ABS"},
        {"kind": "hf-disk", "name": "../private/private_ds"},
        {"kind": "hf", "name": "ABS"},
        {"kind": "imagefolder", "name": "ABS"},
    ],
)
def test_a_description_naming_a_path_is_refused_before_any_read(
    vit, recorded, private_ds, tmp_path, monkeypatch, dataset
):
    dataset = {k: str(private_ds) if v == "ABS" else v for k, v in dataset.items()}
    store = _retargeted(recorded, tmp_path, {**recorded.dataset, **dataset})
    opened = []
    for name in ("load_from_disk", "load_dataset"):
        inner = getattr(datasets, name)
        monkeypatch.setattr(
            datasets, name, lambda *a, _inner=inner, **kw: opened.append(a) or _inner(*a, **kw)
        )
    with pytest.raises(UnsafePathError, match=r"pass the images explicitly \(--images"):
        build_browser(make_sae(vit), store, out_dir=tmp_path / "browser", max_pages=2, progress=False)
    assert opened == []
    # Passing the images explicitly works.
    site = build_browser(
        make_sae(vit),
        store,
        out_dir=tmp_path / "b2",
        images=f"hf-disk:{private_ds}",
        max_pages=2,
        progress=False,
    )
    assert site.index.is_file()


def test_a_hub_id_that_is_also_a_local_folder_is_refused(tmp_path, monkeypatch):
    from vision_sae_lens.data.described import spec_from_description

    assert spec_from_description({"kind": "hf", "name": "ylecun/mnist", "split": "test"}, search=()) == (
        "hf:ylecun/mnist:test"
    )
    (tmp_path / "secrets").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePathError, match="also a local path"):
        spec_from_description({"kind": "hf", "name": "secrets"}, search=())
    # A folder of the recorded name but other content is not taken for the dataset.
    (tmp_path / "images").mkdir()
    noise_images(1)[0].save(tmp_path / "images" / "x.png")
    assert (
        spec_from_description(
            {"kind": "imagefolder", "name": "images", "files_sha256": "0"}, search=[tmp_path]
        )
        is None
    )
