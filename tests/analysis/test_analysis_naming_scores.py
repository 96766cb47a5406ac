"""The naming arithmetic against references written from scratch here: CLIP-Dissect's soft-WPMI as its
authors wrote it (dense, one latent at a time), brute-force z-scores, sklearn's AUROC, brute-force F1.
Chunking (the memory bound) must not change a single result, and the chunks must fit the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from vision_sae_lens.analysis.naming_scores import (
    SoftWPMI,
    auroc_columns,
    chunk_sizes,
    rank_concepts,
    rerank_by_detection,
)
from vision_sae_lens.analysis.stats import best_f1_labels
from vision_sae_lens.errors import ConfigError


def _world(n=60, s=12, c=30, e=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, e, generator=gen), dim=-1)
    text = F.normalize(torch.randn(c, e, generator=gen), dim=-1)
    acts_ns = torch.rand(n, s, generator=gen) + 0.01  # every latent fires on every image
    return image, text, acts_ns


def _reference_soft_wpmi(clip_nc, target_ns, top_k):
    """CLIP-Dissect's similarity.soft_wpmi, restated: dense over latents, one latent at a time."""
    cfg = SoftWPMI()
    probs = torch.softmax(cfg.a * clip_nc, dim=1)
    inds = torch.topk(target_ns, dim=0, k=top_k).indices
    p = (cfg.p_start - torch.arange(top_k) / top_k * (cfg.p_start - cfg.p_end)).unsqueeze(1)
    rows = []
    for j in range(target_ns.shape[1]):
        feats = probs[inds[:, j]]
        rows.append(torch.log(1 + p * (feats - 1) + cfg.min_prob).sum(0))
    pdge = torch.stack(rows)
    prior = torch.logsumexp(pdge, dim=0) - math.log(pdge.shape[0])
    return pdge - cfg.lam * prior


def _top(acts_ns, k):
    top = torch.topk(acts_ns, k, dim=0)
    return top.indices.T.contiguous(), top.values.T.contiguous()


@pytest.mark.parametrize("budget", [1, 700, 10**9])
def test_soft_wpmi_equals_clip_dissect_for_any_chunking(budget):
    image, text, acts = _world()
    k = 10
    ref = _reference_soft_wpmi(image @ text.T, acts, k)
    idx, val = _top(acts, k)
    scores, concepts = rank_concepts(
        idx, val, image, text, similarity="soft_wpmi", n_best=4, budget_bytes=budget
    )
    want = ref.topk(4, dim=1)
    torch.testing.assert_close(scores, want.values, atol=1e-4, rtol=1e-5)
    assert torch.equal(concepts, want.indices)


@pytest.mark.parametrize("budget", [1, 700, 10**9])
def test_contrast_is_the_activation_weighted_mean_z_score(budget):
    image, text, acts = _world(seed=1)
    k = 7
    sim = image @ text.T
    z = (sim - sim.mean(0)) / sim.std(0, correction=0)
    idx, val = _top(acts, k)
    want = torch.stack([(val[j, :, None] * z[idx[j]]).sum(0) / val[j].sum() for j in range(acts.shape[1])])
    scores, concepts = rank_concepts(
        idx, val, image, text, similarity="contrast", n_best=30, budget_bytes=budget
    )
    torch.testing.assert_close(scores, want.sort(dim=1, descending=True).values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(want.gather(1, concepts), scores, atol=1e-5, rtol=1e-5)


def test_empty_slots_do_not_count_and_silent_latents_get_no_name():
    image, text, _ = _world(seed=2)
    idx = torch.tensor([[3, 5, 0, 0], [0, 0, 0, 0], [7, -1, -1, -1]])
    val = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.5, 0.0, 0.0, 0.0]])
    for sim in ("contrast", "soft_wpmi"):
        scores, concepts = rank_concepts(idx, val, image, text, similarity=sim, n_best=3)
        assert torch.isnan(scores[1]).all() and (concepts[1] == -1).all()
        assert (concepts[[0, 2]] >= 0).all() and torch.isfinite(scores[[0, 2]]).all()
    # Only the firing images matter: whatever sits in the empty slots, the scores are the same.
    scrambled = torch.where(val > 0, idx, torch.tensor(11))
    for sim in ("contrast", "soft_wpmi"):
        a = rank_concepts(idx, val, image, text, similarity=sim, n_best=3)
        b = rank_concepts(scrambled, val, image, text, similarity=sim, n_best=3)
        torch.testing.assert_close(a[0], b[0], equal_nan=True)
        assert torch.equal(a[1], b[1])


def test_chunks_fit_the_budget_at_the_required_scale():
    budget = 64 * 2**20
    # 20,000 concepts and 65,536 latents (the bound the package promises), 5,000 probe images, k = 50.
    concepts, latents = chunk_sizes(
        n_images=4000, d_sae=65536, n_concepts=20000, top_k=50, budget_bytes=budget
    )
    assert 4 * concepts * (4000 + 65536) <= budget
    assert 4 * latents * 50 * concepts <= budget
    assert concepts >= 64 and latents >= 1
    # Tiny budgets still make progress, one concept and one latent at a time.
    assert chunk_sizes(n_images=10, d_sae=10, n_concepts=10, top_k=5, budget_bytes=1) == (1, 1)
    with pytest.raises(ConfigError):
        chunk_sizes(n_images=10, d_sae=10, n_concepts=10, top_k=5, budget_bytes=0)


def test_unknown_similarity_is_refused():
    image, text, acts = _world()
    idx, val = _top(acts, 3)
    with pytest.raises(ConfigError, match="similarity"):
        rank_concepts(idx, val, image, text, similarity="cosine")


def test_auroc_columns_matches_sklearn_with_ties_and_binary_scores():
    rng = np.random.default_rng(0)
    n, s = 200, 6
    labels = rng.random((n, s)) < 0.3
    scores = rng.normal(size=(n, s)) + labels
    scores[:, 1] = np.round(scores[:, 1])  # many ties
    scores[:, 2] = labels[:, 2] ^ (rng.random(n) < 0.1)  # a binary score (label-based names)
    got = auroc_columns(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    want = [roc_auc_score(labels[:, j], scores[:, j].astype(np.float32)) for j in range(s)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    one_class = auroc_columns(torch.rand(5, 2), torch.tensor([[True, False]] * 5))
    assert torch.isnan(one_class).all()


def test_best_f1_labels_brute_force():
    rng = np.random.default_rng(1)
    s, n_labels, n = 9, 5, 80
    fires = rng.random((n, s)) < 0.4
    labels = rng.random((n, n_labels)) < 0.3
    fires[:, 0] = False  # a silent latent
    counts = torch.from_numpy(fires.T.astype(int) @ labels.astype(int))
    best = best_f1_labels(counts, torch.from_numpy(fires.sum(0)), torch.from_numpy(labels.sum(0)), n_best=2)
    for j in range(1, s):
        f1 = []
        for label in range(n_labels):
            tp = np.sum(fires[:, j] & labels[:, label])
            p, r = tp / max(fires[:, j].sum(), 1), tp / max(labels[:, label].sum(), 1)
            f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
        order = np.argsort(-np.asarray(f1), kind="stable")[:2]
        assert best["label_sr"][j].tolist() == order.tolist()
        np.testing.assert_allclose(best["f1_sr"][j].numpy(), np.asarray(f1)[order], atol=1e-6)
    assert (best["label_sr"][0] == -1).all() and torch.isnan(best["f1_sr"][0]).all()


@pytest.mark.parametrize("budget", [1, 10**9])
def test_rerank_orders_the_shortlist_by_detection_auroc(budget):
    image, text, acts = _world(seed=3)
    fires = torch.from_numpy(np.random.default_rng(3).random(acts.shape) < 0.3)
    fires[:, 4] = False  # a latent silent on these images: AUROC undefined, order kept
    idx, val = _top(acts, 6)
    scores, concepts = rank_concepts(idx, val, image, text, n_best=5)
    concepts[7] = -1  # a latent without names stays without names
    new_scores, new_concepts, auroc = rerank_by_detection(
        scores, concepts, image, text, lambda sl: fires[:, sl], shortlist=3, budget_bytes=budget
    )
    sim = (image @ text.T).numpy()
    for j in range(acts.shape[1]):
        if j == 7:
            assert (new_concepts[j] == -1).all()
            continue
        cands = concepts[j, :3].tolist()
        if j == 4:
            want = cands
        else:
            au = [roc_auc_score(fires[:, j].numpy(), sim[:, c]) for c in cands]
            want = [cands[i] for i in sorted(range(3), key=lambda i: -au[i])]
            np.testing.assert_allclose(auroc[j].numpy(), sorted(au, reverse=True), atol=1e-6)
        assert new_concepts[j, :3].tolist() == want
        assert new_concepts[j, 3:].tolist() == concepts[j, 3:].tolist()
        for c, v in zip(new_concepts[j].tolist(), new_scores[j].tolist(), strict=True):
            assert v == scores[j, concepts[j].tolist().index(c)]  # each name keeps its own score
