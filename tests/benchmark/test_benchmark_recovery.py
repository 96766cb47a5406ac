"""Bounded-memory recovery (issue 27) against the full per-pair histograms it replaces: equal numbers."""

from __future__ import annotations

import pytest
import torch
from bench_helpers import LAYOUT, LinearReLUSAE, rows_of
from reference_histograms import LatentFactorHistogram, reference_scores
from reference_histograms import feature_recovery as reference_recovery

from vision_sae_lens.benchmark.localization import localization
from vision_sae_lens.benchmark.metrics import splitting_and_mixing
from vision_sae_lens.benchmark.recovery import FactorRecovery, label_pairs
from vision_sae_lens.benchmark.scoring import ScoreConfig, _encoded, score_rows
from vision_sae_lens.benchmark.summaries import families, splitting_summary
from vision_sae_lens.benchmark.truth import ArrayTruth, SyntheticTruth
from vision_sae_lens.data.synthetic import ShapesWorld
from vision_sae_lens.errors import ConfigError


def adversarial_data(seed: int, n: int = 2000, s: int = 40, f: int = 8):
    """Latents with ties, a dead one, a constant dense one, a copy of a factor; factors that are empty,
    everywhere, rare, and tied to a latent."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(n, s, generator=g)) * (torch.rand(n, s, generator=g) < 0.3)
    labels = torch.rand(n, f, generator=g) < torch.linspace(0.02, 0.6, f)
    labels[:, 0] = False  # no positives
    labels[:, 1] = True  # no negatives
    labels[:, 2] = acts[:, 7] > 0.5  # recovered by latent 7 above a threshold
    acts[:, 3] = torch.round(acts[:, 3] * 2) / 2  # ties inside bins
    acts[:, 5] = 0  # dead
    acts[:, 6] = 1.0  # fires everywhere, one value
    acts[:, 9] = labels[:, 4].float() * 3.0  # a perfect detector of factor 4
    acts[:, 10] = acts[:, 9]  # ... and an exact duplicate: ties go to the first latent
    return acts, labels


def run_recovery(acts, labels, *, n_bins, budget, batch, ask=None) -> FactorRecovery:
    rec = FactorRecovery(acts.shape[1], labels.shape[1], n_bins=n_bins, pair_budget_bytes=budget)
    for latents in (None, ask):
        if latents is not None:
            rec.request_thresholds(latents)
        while not rec.done:
            for lo in range(0, len(acts), batch):
                rec.add(acts[lo : lo + batch], *label_pairs(labels[lo : lo + batch]))
            rec.end_pass()
    return rec


@pytest.mark.parametrize(("seed", "pairs_per_pass", "batch"), [(0, 10**6, 700), (1, 5, 333), (2, 1, 2000)])
def test_factor_recovery_equals_the_full_histograms(seed, pairs_per_pass, batch):
    acts, labels = adversarial_data(seed)
    n_bins = 16
    ref = LatentFactorHistogram(acts.double().max(0).values, n_bins=n_bins)
    for lo in range(0, len(acts), batch):
        ref.add(acts[lo : lo + batch], labels[lo : lo + batch])
    sc = ref.scores()
    expected = reference_recovery(sc["auroc_sf"], sc["f1_sf"])
    budget = pairs_per_pass * (n_bins + 1) * 8
    rec = run_recovery(
        acts, labels, n_bins=n_bins, budget=budget, batch=batch, ask=expected["latent_auroc_f"]
    )
    assert torch.equal(rec.auroc_fs().T.nan_to_num(-1.0), sc["auroc_sf"].nan_to_num(-1.0))
    assert torch.equal(rec.best_f1_f, expected["best_f1_f"])
    assert torch.equal(rec.best_f1_latent_f, expected["latent_f1_f"])
    assert torch.equal(rec.precision_sf(), sc["precision_sf"]) and torch.equal(
        rec.recall_sf(), sc["recall_sf"]
    )
    ref_thresholds = sc["threshold_sf"][expected["latent_auroc_f"], torch.arange(labels.shape[1])]
    assert torch.equal(rec.thresholds_of(expected["latent_auroc_f"]), ref_thresholds)
    assert int(rec.best_f1_latent_f[4]) == 9 and float(rec.best_f1_f[4]) == 1.0
    if pairs_per_pass < 10:
        assert rec.passes > 3  # a small budget takes more passes, not more memory


def test_memory_is_bounded_by_latents_times_factors_and_the_pair_budget():
    """The state never holds a (latents, factors, bins) array: at 4,096 latents x 100 factors x 257 bins
    the old histograms alone took 2 x 842 MB; here every pass stays under a few times latents x factors."""
    s, f, n_bins, budget = 4096, 100, 256, 2**26
    rec = FactorRecovery(s, f, n_bins=n_bins, pair_budget_bytes=budget)
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(512, s, generator=g) - 2)
    rows, factors = label_pairs(torch.rand(512, f, generator=g) < 0.05)
    peak = 0
    while not rec.done:
        rec.add(acts, rows, factors)
        peak = max(peak, _state_bytes(rec))
        rec.end_pass()
    bound = 4 * s * f * 8 + budget + 2 * s * (n_bins + 1) * 8
    assert peak <= bound < s * f * (n_bins + 1) * 8 / 8


def _state_bytes(obj) -> int:
    total = 0
    for v in vars(obj).values():
        for t in v if isinstance(v, tuple) else (v,):
            if isinstance(t, torch.Tensor):
                total += t.nelement() * t.element_size()
    return total


@pytest.fixture(scope="module")
def shapes():
    world = ShapesWorld("test", n_images=40)
    return SyntheticTruth(world, patch_size=4)


@pytest.mark.parametrize("truth_kind", ["shapes", "labels"])
def test_score_rows_equals_the_full_histogram_scoring(shapes, truth_kind):
    """End to end on a store-like row stream, with a pair budget small enough to need several passes
    (1 MiB: 510 of the 19 or 20 x 200 pairs per pass)."""
    n_images = 40
    truth = shapes
    if truth_kind == "labels":
        labels = torch.rand(n_images, 20, generator=torch.Generator().manual_seed(3)) < 0.2
        truth = ArrayTruth(labels.numpy(), n_patches=LAYOUT.n_patches)
    g = torch.Generator().manual_seed(4)
    acts = [torch.randn(LAYOUT.n_patches, 12, generator=g) for _ in range(n_images)]
    for i, a in enumerate(acts):  # some signal: the first dims carry the patch labels
        a[:, :8] += 2 * torch.tensor(truth.patch_factors(i)[:, :8], dtype=torch.float32)
    w = torch.randn(12, 200, generator=g) * 0.6
    w[:, 1] = 0  # dead
    sae = LinearReLUSAE(w, b_enc=torch.full((200,), -0.5))
    rows = rows_of(acts, batch_size=97)
    cfg = ScoreConfig(n_bins=256, pair_budget_mib=1, probe_images=8, probe_ks=(1,))
    report = score_rows(sae, rows, truth, layout=LAYOUT, n_images=n_images, config=cfg, progress=False)

    ref = reference_scores(sae, rows, truth, LAYOUT, n_bins=256)
    names = list(truth.factor_names)
    for level in ("patch", "image"):
        sc = ref[level].scores()
        exp = reference_recovery(sc["auroc_sf"], sc["f1_sf"])
        got = report["recovery"][level]
        assert got["mean_auroc"] == float(exp["best_auroc_f"].mean())
        assert got["mean_factor_f1"] == float(exp["best_f1_f"].mean())
        for k, name in enumerate(names):
            assert got["per_factor"][name] == {
                "auroc": float(exp["best_auroc_f"][k]), "auroc_latent": int(exp["latent_auroc_f"][k]),
                "factor_f1": float(exp["best_f1_f"][k]), "factor_f1_latent": int(exp["latent_f1_f"][k]),
                "recovered": bool(exp["recovered_f"][k]),
            }  # fmt: skip
    sc = ref["patch"].scores()
    alive = ref["patch"].total_sb[:, 1:].sum(1) > 0
    mix = splitting_and_mixing(sc["precision_sf"], sc["recall_sf"], alive, prior_f=ref["patch"].n_positive_f,
                               family_f=families(names), precision_threshold=cfg.precision_threshold,
                               recall_threshold=cfg.recall_threshold)  # fmt: skip
    assert report["splitting"] == splitting_summary(mix, names, alive)
    latents = reference_recovery(sc["auroc_sf"], sc["f1_sf"])["latent_auroc_f"]
    thresholds = sc["threshold_sf"][latents, torch.arange(len(names))]
    with torch.no_grad():
        batches = _encoded(sae, rows, LAYOUT, desc="", progress=False)
        assert report["localization"] == localization(batches, truth, LAYOUT, latents, thresholds, names)


def test_bad_latents_and_labels_fail_clearly():
    rec = FactorRecovery(3, 2, n_bins=4)
    with pytest.raises(ConfigError, match="NaN"):
        rec.add(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ConfigError, match="factors must lie"):
        rec.add(torch.ones(1, 3), torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ConfigError, match="latents"):
        rec.add(torch.ones(1, 4), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ConfigError, match="no rows"):
        rec.end_pass()
