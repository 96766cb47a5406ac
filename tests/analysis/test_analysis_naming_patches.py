"""Patch-level naming (``name_latents(patch_labels=...)``): each latent's name, F1, precision / recall and
held-out detection AUROC equal a brute force over every probe patch (the AUROC by scikit-learn's
``roc_auc_score``), for a random SAE over the oracle store (CLS recorded in the layout, not stored, so
token indices are offset); masks of the wrong shape and mixed requests fail before the scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from naming_oracle import LAYOUT, N_FACTORS, SITE, oracle_sae, write_oracle_store
from sklearn.metrics import roc_auc_score

from vision_sae_lens.analysis import naming_patches
from vision_sae_lens.analysis.naming import name_latents
from vision_sae_lens.analysis.naming_probe import split_probe
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld
from vision_sae_lens.errors import ConfigError

N_IMAGES = 100
PATCH = LAYOUT.patch_size[0]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(world, oracle store, an SAE with random weights over it, masks: factors covering half a patch)."""
    world = ShapesWorld("test", n_images=N_IMAGES)
    store = write_oracle_store(world, tmp_path_factory.mktemp("patches") / "store")
    sae = oracle_sae()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # each latent: its factor mixed with others, so names are not the identity
        sae.W_enc.add_(0.7 * torch.randn(N_FACTORS, N_FACTORS, generator=gen))
        sae.b_enc.copy_(-0.5 * torch.rand(N_FACTORS, generator=gen))

    # Other masks than the rows the store holds (those cover a quarter of a patch): the names must come
    # from the masks given.
    def masks(i: int) -> np.ndarray:
        return world.patch_factors(int(i), patch_size=PATCH, min_coverage=0.5)

    return world, store, sae, masks


def brute_force(store, sae, masks, images):
    """(fires (patches, d_sae), masks (patches, factors)) over every patch of ``images``."""
    offsets = store.image_offsets()
    fires, labels = [], []
    for i in images:
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        _, token_n = store.provenance(lo, hi)
        with torch.no_grad():
            fires.append((sae.encode(store.read_rows(SITE, lo, hi).float()) > 0).numpy())
        labels.append(masks(i)[np.asarray(token_n) - LAYOUT.n_prefix])
    return np.concatenate(fires), np.concatenate(labels)


def test_patch_names_equal_a_brute_force_over_the_patches(case, monkeypatch):
    _, store, sae, masks = case
    monkeypatch.setattr(naming_patches, "_FLOAT_CHUNK", 64 * 5)  # slices of 5 latents at 64 rows a batch
    names = name_latents(
        sae, store, patch_labels=masks, label_names=list(FACTOR_NAMES), max_images=None, runner_ups=2,
        batch_size=64, progress=False,
    )  # fmt: skip
    split = split_probe(N_IMAGES, labels=np.asarray(store.labels), max_images=None)
    assert names.split["naming_images"] == len(split.naming) and names.split["heldout_images"] == len(
        split.heldout
    )
    fires, labels = brute_force(store, sae, masks, split.naming)
    both = fires.T.astype(np.int64) @ labels.astype(np.int64)
    precision = both / np.maximum(fires.sum(0), 1)[:, None]
    recall = both / np.maximum(labels.sum(0), 1)[None, :]
    f1 = np.where(both > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    held_fires, held_labels = brute_force(store, sae, masks, split.heldout)
    checked = 0
    for j in range(N_FACTORS):
        if not fires[:, j].any():
            assert names.name_of(j) is None
            continue
        best = int(np.argmax(f1[j]))  # ties: the lower factor
        assert names.name_of(j) == FACTOR_NAMES[best]
        np.testing.assert_allclose(names.score_sr[j, 0], f1[j, best], rtol=1e-5)
        np.testing.assert_allclose(names.score_sr[j, 1:], np.sort(f1[j])[::-1][1:3], rtol=1e-5)
        np.testing.assert_allclose(names.precision_sr[j, 0], precision[j, best], rtol=1e-5)
        np.testing.assert_allclose(names.recall_sr[j, 0], recall[j, best], rtol=1e-5)
        y = held_fires[:, j]
        if 0 < y.sum() < len(y):
            np.testing.assert_allclose(names.auroc_s[j], roc_auc_score(y, held_labels[:, best]), rtol=1e-5)
            checked += 1
        else:
            assert np.isnan(names.auroc_s[j])
    assert checked >= N_FACTORS // 2, "the random SAE fires on some but not all held-out patches"
    assert len({names.name_of(j) for j in range(N_FACTORS)}) > 3, "a non-trivial naming"
    doc = names.to_json()
    assert doc["method"]["level"] == "patch" and doc["concepts"] == {
        "source": "patch masks",
        "count": N_FACTORS,
    }


def test_patch_labels_of_the_wrong_shape_or_mixed_requests_are_refused(case):
    world, store, sae, masks = case
    factors = list(FACTOR_NAMES)
    with pytest.raises(ConfigError, match="expected \\(n_patches, labels\\)"):
        name_latents(sae, store, patch_labels=lambda i: masks(i).T, label_names=factors, progress=False)
    with pytest.raises(ConfigError, match="pass label_names"):
        name_latents(sae, store, patch_labels=masks, progress=False)
    with pytest.raises(ConfigError, match="neither a namer nor image labels"):
        name_latents(
            sae, store, patch_labels=masks, label_names=factors, namer="demo:shapes-clip", progress=False
        )
