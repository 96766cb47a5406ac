"""Ground-truth metrics of SAE latents from fixed-size accumulators: AUROC / F1 from histograms,
recovery, splitting / mixing, IoU, and the streaming reconstruction numbers.

A latent's activations are binned per latent: bin 0 holds ``a <= 0`` (silent), bins ``1..B`` split
``(0, max_a]`` evenly, so thresholds "fires above a bin edge" are exact for the binned values and AUROC
counts ties inside a bin as half (the trapezoid rule). With indicator latents (0/1) every number is
exact. :mod:`vision_sae_lens.benchmark.recovery` gathers these statistics for every (latent, factor)
pair without a histogram per pair. See docs/benchmark.md for each definition and its source.
"""

from __future__ import annotations

import torch

from vision_sae_lens.errors import ConfigError

DEFAULT_BINS = 256


def auroc_from_histograms(pos_xb: torch.Tensor, neg_xb: torch.Tensor) -> torch.Tensor:
    """AUROC of a score binned in ascending bins: P(score_pos > score_neg) + 0.5 P(tie in a bin).

    NaN where there are no positives or no negatives."""
    n_pos, n_neg = pos_xb.sum(-1), neg_xb.sum(-1)
    neg_below = torch.cumsum(neg_xb, -1) - neg_xb
    wins = (pos_xb * (neg_below + 0.5 * neg_xb)).sum(-1)
    out = wins / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), out, torch.full_like(out, float("nan")))


def best_f1_from_histograms(
    pos_xb: torch.Tensor, neg_xb: torch.Tensor, max_x: torch.Tensor, n_bins: int
) -> dict[str, torch.Tensor]:
    """Best F1 over the thresholds "bin >= t" for t = 1..B (a latent must fire to predict positive)."""
    tp_xt = torch.flip(torch.cumsum(torch.flip(pos_xb, [-1]), -1), [-1])[..., 1:]
    fp_xt = torch.flip(torch.cumsum(torch.flip(neg_xb, [-1]), -1), [-1])[..., 1:]
    n_pos = pos_xb.sum(-1, keepdim=True)
    f1_xt = 2 * tp_xt / (tp_xt + fp_xt + n_pos).clamp_min(1e-12)
    f1_x, t_x = f1_xt.max(-1)
    # Bin t (1-based) starts above (t - 1) / B * max; "bin >= t" means "activation > that edge".
    edge = max_x.reshape(*max_x.shape, *([1] * (t_x.dim() - max_x.dim()))) * t_x.double() / n_bins
    fires = tp_xt[..., 0] + fp_xt[..., 0]
    precision = tp_xt[..., 0] / fires.clamp_min(1e-12)
    recall = tp_xt[..., 0] / n_pos.squeeze(-1).clamp_min(1e-12)
    return {"f1_sf": f1_x, "threshold_sf": edge, "precision_sf": precision, "recall_sf": recall}


def feature_recovery(
    best_auroc_f: torch.Tensor,
    latent_auroc_f: torch.Tensor,
    best_f1_f: torch.Tensor,
    best_f1_latent_f: torch.Tensor,
    *,
    f1_threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Per factor: the best single latent by AUROC and by F1 at its best threshold, and whether the factor
    is recovered (best F1 >= ``f1_threshold``)."""
    return {
        "best_auroc_f": best_auroc_f,
        "latent_auroc_f": latent_auroc_f,
        "best_f1_f": best_f1_f,
        "latent_f1_f": best_f1_latent_f,
        "recovered_f": best_f1_f >= f1_threshold,
    }


def splitting_and_mixing(
    precision_sf: torch.Tensor,
    recall_sf: torch.Tensor,
    alive_s: torch.Tensor,
    *,
    prior_f: torch.Tensor,
    family_f: torch.Tensor | None = None,
    precision_threshold: float = 0.8,
    recall_threshold: float = 0.05,
) -> dict[str, torch.Tensor]:
    """Feature splitting and monosemanticity.

    ``latents_per_factor_f``: latents that fire mostly on the factor (precision >= ``precision_threshold``
    when they fire) and cover a share of it (recall >= ``recall_threshold``): a factor spread over many
    such latents is split.

    Mixing is measured per factor family (``family_f``; the values of a family are mutually exclusive,
    e.g. red / green / blue / yellow). For a live latent, ``q(v)`` is its precision for each value ``v``
    of a family, normalised over the family; the family it is most selective for is the one where ``q``
    is furthest (KL divergence) from the family's base rates ``prior_f``. ``factors_per_latent_s`` is the
    perplexity ``exp(H(q))`` there: 1 for a latent that fires on one value (red), 2 for one that fires
    on red OR blue. Detecting "red" and "square" together is a conjunction and counts 1. ``purity_s``:
    the largest precision of a live latent over all factors.
    """
    part_sf = (precision_sf >= precision_threshold) & (recall_sf >= recall_threshold) & alive_s[:, None]
    fam = torch.zeros(precision_sf.shape[1], dtype=torch.long) if family_f is None else family_f.long()
    s = precision_sf.shape[0]
    best_kl = torch.full((s,), -1.0, dtype=torch.float64)
    perplexity = torch.zeros(s, dtype=torch.float64)
    for g in torch.unique(fam).tolist():
        cols = (fam == g).nonzero().flatten()
        mass = precision_sf[:, cols].double()
        total = mass.sum(1, keepdim=True)
        q = mass / total.clamp_min(1e-12)
        p = prior_f[cols].double() / prior_f[cols].double().sum().clamp_min(1e-12)
        log_ratio = (q.clamp_min(1e-12) / p.clamp_min(1e-12)).log()
        kl = torch.where(q > 0, q * log_ratio, torch.zeros_like(q)).sum(1)
        ent = -torch.where(q > 0, q * q.clamp_min(1e-12).log(), torch.zeros_like(q)).sum(1)
        kl = torch.where(total.squeeze(1) > 0, kl, torch.full_like(kl, -1.0))
        better = kl > best_kl
        best_kl = torch.where(better, kl, best_kl)
        perplexity = torch.where(better, ent.exp(), perplexity)
    responsive = alive_s & (best_kl >= 0)
    purity_s = torch.where(alive_s, precision_sf.max(1).values.double(), torch.zeros(s, dtype=torch.float64))
    return {
        "latents_per_factor_f": part_sf.sum(0),
        "factors_per_latent_s": torch.where(responsive, perplexity, torch.zeros_like(perplexity)),
        "responsive_s": responsive,
        "purity_s": purity_s,
    }


def mask_iou(pred_hw: torch.Tensor, mask_hw: torch.Tensor) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = (pred_hw | mask_hw).sum()
    return 1.0 if int(union) == 0 else float((pred_hw & mask_hw).sum() / union)


class ReconstructionAccumulator:
    """Streaming MSE, FVU (= normalised MSE), L0, shrinkage and firing counts (dead / dense by the
    package's rule: dead = never fires on the rows, dense = fires on more than ``dense_threshold`` of them)."""

    def __init__(self, d: int, s: int) -> None:
        self.n = 0
        self.sq_err = 0.0
        self.sum_d = torch.zeros(d, dtype=torch.float64)
        self.sumsq_d = torch.zeros(d, dtype=torch.float64)
        self.l0 = 0.0
        self.fired_s = torch.zeros(s, dtype=torch.float64)
        self.max_s = torch.zeros(s, dtype=torch.float64)
        from vision_sae_lens.compat import synthetic

        self.shrinkage = (
            synthetic.ShrinkageCalculator()
        )  # SynthSAEBench's: mean ||x_hat|| / ||x|| over ||x|| > 1e-6

    def add(self, acts_nd: torch.Tensor, recon_nd: torch.Tensor, feats_ns: torch.Tensor) -> None:
        """Count a batch of inputs, reconstructions and latents."""
        x = acts_nd.double()
        self.n += x.shape[0]
        self.sq_err += float((recon_nd.double() - x).pow(2).sum())
        self.sum_d += x.sum(0)
        self.sumsq_d += x.pow(2).sum(0)
        fires = feats_ns > 0
        self.l0 += float(fires.sum())
        self.fired_s += fires.sum(0).double()
        self.max_s = torch.maximum(
            self.max_s, feats_ns.max(0).values.double()
        )  # no float64 copy of the batch
        self.shrinkage.add_batch(recon_nd, acts_nd)

    def result(self, *, dense_threshold: float = 0.1) -> dict[str, float]:
        """JSON-ready numbers."""
        if self.n == 0:
            raise ConfigError("no rows were added")
        total_var = float((self.sumsq_d - self.sum_d.pow(2) / self.n).sum())
        fvu = self.sq_err / total_var if total_var > 0 else float("nan")
        freq_s = self.fired_s / self.n
        return {
            "rows": self.n,
            "mse": self.sq_err / (self.n * self.sum_d.numel()),
            "nmse": fvu,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "l0": self.l0 / self.n,
            "dead_fraction": float((self.fired_s == 0).double().mean()),
            "dense_fraction": float((freq_s > dense_threshold).double().mean()),
            "dense_threshold": dense_threshold,
            "shrinkage": self.shrinkage.compute(),
        }
