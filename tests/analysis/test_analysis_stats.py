"""Feature statistics and label selectivity against brute force over the whole store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import SITE, LabelledImages, make_sae

from vision_sae_lens.analysis import feature_stats
from vision_sae_lens.store import cache_activations


@pytest.fixture(scope="module")
def labelled_store(vit, tmp_path_factory):
    source = LabelledImages(12, n_labels=3)
    store = cache_activations(
        vit,
        source,
        sites=[SITE],
        out_dir=tmp_path_factory.mktemp("s") / "store",
        dtype="float32",
        progress=False,
    )
    return source, store


def test_feature_stats_equal_brute_force(vit, labelled_store):
    source, store = labelled_store
    sae = make_sae(vit)
    stats = feature_stats(sae, store, batch_size=7, progress=False)
    acts = store.read_rows(SITE, 0, store.n_rows)
    image_n = torch.as_tensor(store.provenance(0, store.n_rows)[0])
    with torch.no_grad():
        feats = sae.encode(acts)
    fires = feats > 0
    torch.testing.assert_close(stats.frequency, fires.float().mean(0))
    torch.testing.assert_close(stats.mean_activation, feats.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.max_activation, feats.max(0).values)
    fires_img = torch.stack([fires[image_n == i].any(0) for i in range(12)])  # (images, s)
    torch.testing.assert_close(stats.image_frequency, fires_img.float().mean(0))
    assert torch.equal(stats.dead, ~fires.any(0))
    assert stats.hist_counts.sum(1).tolist() == fires.sum(0).tolist()
    # Selectivity, by hand: precision/recall of the best-F1 label per latent.
    labels = torch.tensor(source.labels)
    for j in range(sae.cfg.d_sae):
        n_fire = int(fires_img[:, j].sum())
        if n_fire == 0:
            assert int(stats.best_label[j]) == -1
            continue
        best = int(stats.best_label[j])
        hits = int((fires_img[:, j] & (labels == best)).sum())
        assert float(stats.precision[j]) == pytest.approx(hits / n_fire)
        assert float(stats.recall[j]) == pytest.approx(hits / int((labels == best).sum()))
        f1 = [
            2 * int((fires_img[:, j] & (labels == c)).sum()) / (n_fire + int((labels == c).sum()))
            for c in range(3)
        ]
        assert f1[best] == pytest.approx(max(f1))
    summary = stats.summary()
    assert summary["n_images"] == 12 and summary["d_sae"] == 48 and "mean_best_precision" in summary
    assert stats.label_names == source.label_names


def test_quantiles_match_torch_within_bin_resolution(vit, labelled_store):
    _, store = labelled_store
    sae = make_sae(vit)
    stats = feature_stats(sae, store, progress=False)
    with torch.no_grad():
        feats = sae.encode(store.read_rows(SITE, 0, store.n_rows))
    q = stats.quantiles((0.5, 0.9))
    for j in range(0, 48, 7):
        active = feats[:, j][feats[:, j] > 0]
        if active.numel() < 20:
            continue
        ref = torch.quantile(active, torch.tensor([0.5, 0.9]))
        assert torch.allclose(q[j], ref, rtol=0.15), (j, q[j], ref)


def test_labels_from_an_image_source_and_dense_flags(vit):
    source = LabelledImages(6, n_labels=2, seed=1)
    sae = make_sae(vit)
    with torch.no_grad():
        sae.b_enc[0] = 100.0  # latent 0 fires everywhere
        sae.b_enc[1] = -100.0  # latent 1 never fires
    stats = feature_stats(sae, source, model=vit, progress=False)
    assert bool(stats.dense[0]) and float(stats.frequency[0]) == 1.0
    assert bool(stats.dead[1]) and int(stats.best_label[1]) == -1
    assert stats.precision is not None and float(stats.recall[0]) == 1.0
    assert torch.isnan(stats.quantiles()[1]).all()


def test_selectivity_without_labels_is_a_clear_error(vit, tmp_path):
    images = LabelledImages(3).images
    store = cache_activations(vit, images, sites=[SITE], out_dir=tmp_path / "store", progress=False)
    sae = make_sae(vit)
    assert store.labels is None
    with pytest.raises(ValueError, match="selectivity needs a label per image"):
        feature_stats(sae, store, selectivity=True, progress=False)
    with pytest.raises(ValueError, match="selectivity needs a label per image"):
        feature_stats(sae, images, model=vit, selectivity=True, progress=False)
    stats = feature_stats(sae, store, progress=False)
    assert stats.precision is None and "mean_best_precision" not in stats.summary()
    with_labels = feature_stats(sae, store, labels=np.array([0, 1, 1]), progress=False)
    assert with_labels.best_label is not None
    with pytest.raises(ValueError, match="dense_threshold"):
        feature_stats(sae, store, dense_threshold=0.0)
