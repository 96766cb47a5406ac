"""``analyze`` refuses NaN / Inf activations (and an SAE whose latents are not finite) instead of writing
pages of NaN statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import SITE, make_sae, noise_images
from helpers import reseal_store

from vision_sae_lens.analysis import build_browser
from vision_sae_lens.errors import VisionSAELensError
from vision_sae_lens.store import ActivationStore, cache_activations


@pytest.fixture(scope="module")
def clean_store(vit, tmp_path_factory):
    out = tmp_path_factory.mktemp("acts") / "store"
    return cache_activations(vit, noise_images(4), sites=[SITE], out_dir=out, progress=False)


def test_nan_rows_are_refused_naming_the_image(vit, clean_store, tmp_path):
    import shutil

    shutil.copytree(clean_store.path, tmp_path / "store")

    def poison(rows_nd):
        rows_nd[40, 7] = np.nan  # row 40: image 2 (16 patch rows per image)
        return rows_nd

    reseal_store(tmp_path / "store", rows={(SITE, 0): poison})
    with pytest.raises(VisionSAELensError, match=r"non-finite activations at .* in 1 rows \(images \[2\]\)"):
        build_browser(
            make_sae(vit), ActivationStore(tmp_path / "store"), out_dir=tmp_path / "b", progress=False
        )
    assert not (tmp_path / "b" / "index.html").exists()


def test_an_sae_with_nan_weights_is_refused(vit, clean_store, tmp_path):
    sae = make_sae(vit)
    with torch.no_grad():
        sae.W_enc[0, 3] = float("nan")
    with pytest.raises(VisionSAELensError, match="non-finite SAE latents"):
        build_browser(sae, clean_store, out_dir=tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "index.html").exists()
