"""The scorer end to end on in-memory rows: the oracle scores ~1, a random SAE near chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_helpers import LAYOUT, LinearReLUSAE, oracle_inputs, rows_of

from vision_sae_lens.benchmark.scoring import ScoreConfig, score_rows
from vision_sae_lens.benchmark.truth import ArrayTruth, SyntheticTruth
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld

N_IMAGES = 120
F = len(FACTOR_NAMES)
CFG = ScoreConfig(probe_ks=(1, 2), probe_images=N_IMAGES, batch_size=500)


@pytest.fixture(scope="module")
def truth():
    return SyntheticTruth(ShapesWorld("test", n_images=N_IMAGES), patch_size=4)


@pytest.fixture(scope="module")
def oracle_report(truth):
    # Activations are the patch factor indicators (plus noise dims); the oracle's latents copy them.
    inputs = oracle_inputs(truth, N_IMAGES)
    torch.manual_seed(0)
    acts = [torch.cat([x, 0.01 * torch.randn(len(x), 5)], 1) for x in inputs]
    w = torch.cat([torch.eye(F), torch.zeros(5, F)])
    sae = LinearReLUSAE(w, w_dec=torch.cat([torch.eye(F), torch.zeros(F, 5)], 1))
    return score_rows(sae, rows_of(acts, batch_size=333), truth, layout=LAYOUT, n_images=N_IMAGES,
                      config=CFG, progress=False)  # fmt: skip


def test_oracle_recovers_every_factor_at_patch_and_image_level(oracle_report):
    for level in ("patch", "image"):
        rec = oracle_report["recovery"][level]
        assert rec["mean_auroc"] == pytest.approx(1.0)
        assert rec["mean_factor_f1"] == pytest.approx(1.0)
        assert rec["fraction_recovered"] == 1.0
        assert [rec["per_factor"][n]["auroc_latent"] for n in FACTOR_NAMES] == list(range(F))


def test_oracle_localizes_exactly_and_is_neither_split_nor_mixed(oracle_report):
    loc = oracle_report["localization"]
    assert loc["mean_iou"] == pytest.approx(1.0)
    assert loc["pointing_game"] == pytest.approx(1.0)
    split = oracle_report["splitting"]
    assert set(split["latents_per_factor"].values()) == {1}
    assert split["monosemantic_fraction"] == pytest.approx(1.0)
    assert split["mean_purity"] == pytest.approx(1.0)


def test_oracle_probes_beat_the_majority_class_and_reconstruction_is_near_perfect(oracle_report):
    probing = oracle_report["probing"]
    assert probing["sae"][0] > probing["majority_baseline"] + 0.15
    assert oracle_report["reconstruction"]["nmse"] < 0.01
    # CLS rows are in the stream but skipped: only patch rows are scored.
    assert oracle_report["reconstruction"]["rows"] == N_IMAGES * LAYOUT.n_patches


def test_random_sae_on_unrelated_activations_scores_near_chance(truth):
    torch.manual_seed(1)
    acts = [torch.randn(LAYOUT.n_patches, 16) for _ in range(N_IMAGES)]
    sae = LinearReLUSAE(torch.randn(16, 32) * 0.5, b_enc=torch.full((32,), -0.2))
    rep = score_rows(sae, rows_of(acts), truth, layout=LAYOUT, n_images=N_IMAGES, config=CFG, progress=False)
    patch = rep["recovery"]["patch"]
    assert abs(patch["mean_auroc"] - 0.5) < 0.06  # best of 32 random latents: a small upward bias only
    assert patch["fraction_recovered"] == 0.0
    assert rep["recovery"]["image"]["mean_auroc"] < 0.65
    assert rep["localization"]["mean_iou"] < 0.3
    assert rep["splitting"]["monosemantic_fraction"] < 0.2
    assert abs(rep["probing"]["sae"][0] - rep["probing"]["majority_baseline"]) < 0.1


def test_user_labels_without_masks_give_patch_metrics_and_skip_pointing(truth):
    labels = np.stack([truth.image_factors(i) for i in range(N_IMAGES)])
    user = ArrayTruth(labels, factor_names=list(FACTOR_NAMES), n_patches=LAYOUT.n_patches)
    acts = [
        torch.from_numpy(np.broadcast_to(labels[i], (LAYOUT.n_patches, F)).astype(np.float32))
        for i in range(N_IMAGES)
    ]
    rep = score_rows(LinearReLUSAE(torch.eye(F)), rows_of(acts), user, layout=LAYOUT, n_images=N_IMAGES,
                     config=CFG, progress=False)  # fmt: skip
    assert rep["recovery"]["image"]["mean_auroc"] == pytest.approx(1.0)
    assert rep["localization"]["pointing_game"] == pytest.approx(1.0)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="f1_threshold"):
        ScoreConfig(f1_threshold=1.5)
    with pytest.raises(ValueError, match="n_factors"):
        ArrayTruth(np.zeros(5), n_patches=4)
    with pytest.raises(ValueError, match="n_patches"):
        ArrayTruth(np.zeros((5, 2)))
