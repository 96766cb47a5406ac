"""The streaming metrics against brute force (scikit-learn, numpy) on small cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from vision_sae_lens.benchmark.metrics import ReconstructionAccumulator, mask_iou, splitting_and_mixing
from vision_sae_lens.benchmark.probing import fit_logistic, sparse_probing
from vision_sae_lens.benchmark.recovery import FactorRecovery, label_pairs


def recovery_of(
    acts: np.ndarray, labels: np.ndarray, *, n_bins: int, thresholds_of: list[int] | None = None
) -> FactorRecovery:
    """Stream (acts, labels) in batches of 512 through FactorRecovery until it is done (and, with
    ``thresholds_of``, until those latents' thresholds are known)."""
    acts_t, labels_t = torch.from_numpy(acts), torch.from_numpy(labels)
    rec = FactorRecovery(acts.shape[1], labels.shape[1], n_bins=n_bins)
    for ask in (None, thresholds_of):
        if ask is not None:
            rec.request_thresholds(torch.tensor(ask))
        while not rec.done:
            for lo in range(0, len(acts_t), 512):
                rec.add(acts_t[lo : lo + 512], *label_pairs(labels_t[lo : lo + 512]))
            rec.end_pass()
    return rec


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_sklearn_on_values_that_fall_in_distinct_bins(seed):
    rng = np.random.default_rng(seed)
    n_bins = 16
    values = rng.integers(0, n_bins + 1, size=500).astype(np.float64)  # 0 (silent) .. B, one value per bin
    labels = rng.random(500) < 0.2 + 0.04 * values
    rec = recovery_of(values[:, None], labels[:, None], n_bins=n_bins)
    assert float(rec.auroc_fs()[0, 0]) == pytest.approx(roc_auc_score(labels, values), abs=1e-12)


def test_auroc_close_to_sklearn_on_continuous_values():
    rng = np.random.default_rng(3)
    n, s, f = 4000, 3, 2
    labels = rng.random((n, f)) < 0.3
    acts = np.maximum(0, rng.normal(size=(n, s)) + labels[:, [0, 1, 0]] * np.array([1.5, 0.7, -0.5]))
    auroc = recovery_of(acts, labels, n_bins=256).auroc_fs()  # streamed in batches of 512
    for j in range(s):
        for k in range(f):
            assert float(auroc[k, j]) == pytest.approx(roc_auc_score(labels[:, k], acts[:, j]), abs=0.005)


def test_best_f1_and_its_threshold_match_a_brute_force_search():
    rng = np.random.default_rng(4)
    n_bins = 10
    values = rng.integers(0, n_bins + 1, size=300).astype(np.float64)
    labels = rng.random(300) < values / (n_bins + 2)
    rec = recovery_of(values[:, None], labels[:, None], n_bins=n_bins, thresholds_of=[0])
    brute = {t: f1_score(labels, values > t) for t in range(n_bins)}  # "act > t" for t = 0..B-1
    best_t = max(brute, key=brute.get)
    assert float(rec.best_f1_f[0]) == pytest.approx(brute[best_t], abs=1e-12)
    threshold = float(rec.thresholds_of(torch.tensor([0]))[0])
    assert f1_score(labels, values > threshold) == pytest.approx(brute[best_t], abs=1e-12)
    fires = values > 0
    assert float(rec.precision_sf()[0, 0]) == pytest.approx(labels[fires].mean(), abs=1e-12)
    assert float(rec.recall_sf()[0, 0]) == pytest.approx(fires[labels].mean(), abs=1e-12)


def test_auroc_is_nan_without_positives_or_negatives():
    acts = np.array([[0.0], [1.0], [2.0]])
    labels = np.array(
        [[False, True], [False, True], [False, True]]
    )  # factor 0: no positives; 1: no negatives
    assert torch.isnan(recovery_of(acts, labels, n_bins=4).auroc_fs()).all()


def test_reconstruction_accumulator_matches_direct_formulas():
    torch.manual_seed(0)
    x = torch.randn(1000, 8) * torch.arange(1, 9) + 3
    recon = x + 0.3 * torch.randn_like(x)
    feats = torch.relu(torch.randn(1000, 5) - torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0]))
    feats[:, 4] = 0  # a dead latent
    acc = ReconstructionAccumulator(8, 5)
    for lo in range(0, 1000, 300):
        acc.add(x[lo : lo + 300], recon[lo : lo + 300], feats[lo : lo + 300])
    out = acc.result(dense_threshold=0.1)
    fvu = float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert out["nmse"] == pytest.approx(fvu, rel=1e-6)
    assert out["l0"] == pytest.approx(float((feats > 0).sum(1).double().mean()), rel=1e-12)
    freq = (feats > 0).float().mean(0)
    assert out["dead_fraction"] == pytest.approx(float((freq == 0).float().mean()))
    assert out["dense_fraction"] == pytest.approx(float((freq > 0.1).float().mean()))


def test_splitting_and_mixing_on_hand_built_latents():
    # factors: color=red, color=blue, shape=square, shape=disc (two families)
    family = torch.tensor([0, 0, 1, 1])
    prior = torch.tensor([50.0, 50.0, 50.0, 50.0])
    precision = torch.tensor(
        [
            [1.0, 0.0, 0.5, 0.5],  # red: monosemantic
            [0.5, 0.5, 0.5, 0.5],  # red OR blue (and any shape): mixes two colours
            [1.0, 0.0, 1.0, 0.0],  # red square: a conjunction, one value per family
            [0.9, 0.0, 0.5, 0.5],  # a second red latent: red is split
        ],
        dtype=torch.float64,
    )
    recall = torch.tensor(
        [[0.9, 0, 0.5, 0.5], [1, 1, 1, 1], [0.3, 0, 0.6, 0], [0.2, 0, 0.1, 0.1]], dtype=torch.float64
    )
    alive = torch.tensor([True, True, True, True])
    out = splitting_and_mixing(
        precision, recall, alive, prior_f=prior, family_f=family, precision_threshold=0.8
    )
    assert out["factors_per_latent_s"].tolist() == pytest.approx([1.0, 2.0, 1.0, 1.0])
    assert out["latents_per_factor_f"].tolist() == [3, 0, 1, 0]  # red: latents 0, 2, 3; square: latent 2
    dead = torch.tensor([True, True, True, False])
    assert (
        splitting_and_mixing(precision, recall, dead, prior_f=prior, family_f=family)["latents_per_factor_f"][
            0
        ]
        == 2
    )


def test_mask_iou_matches_numpy():
    rng = np.random.default_rng(5)
    a, b = rng.random((8, 8)) < 0.4, rng.random((8, 8)) < 0.4
    expected = (a & b).sum() / (a | b).sum()
    assert mask_iou(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected)
    assert mask_iou(torch.zeros(3, 3, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool)) == 1.0


def test_logistic_fit_agrees_with_sklearn():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 3))
    y = (x @ np.array([1.5, -1.0, 0.2]) + 0.5 * rng.normal(size=400)) > 0.3
    w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), l2=1e-3)
    # sklearn minimises C * sum(log-loss) + |w|^2 / 2; ours mean(log-loss) + l2 |w|^2: C = 1 / (2 n l2)
    ref = LogisticRegression(C=1 / (2 * 400 * 1e-3), tol=1e-10, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(w.numpy(), ref.coef_[0], rtol=1e-3, atol=1e-4)
    assert float(b) == pytest.approx(float(ref.intercept_[0]), abs=1e-3)


def test_sparse_probing_finds_the_informative_feature_and_is_at_chance_on_noise():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 20))
    y = np.stack(
        [x[:, 7] > 0, rng.random(600) < 0.5], axis=1
    )  # factor 0 lives in feature 7; factor 1 is noise
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    acc = sparse_probing(xt[:300], yt[:300], xt[300:], yt[300:], ks=(1, 5))
    assert acc[0, 0] > 0.97 and acc[1, 0] > 0.95
    assert abs(acc[0, 1] - 0.5) < 0.1
    assert np.isnan(
        sparse_probing(xt[:10], torch.ones(10, 1, dtype=torch.bool), xt[10:20], yt[10:20, :1], ks=(1,))
    ).all()
