"""The benchmark's scoring before issue 27, kept as the reference: a full activation histogram per
(latent, factor) pair (``latents x factors x (B + 1) x 8`` bytes). Tests check that the bounded-memory
:class:`~vision_sae_lens.benchmark.recovery.FactorRecovery` reproduces these numbers exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_BINS = 256


@dataclass
class LatentFactorHistogram:
    """Per (latent, factor) histograms of activations on positive examples, and per-latent totals."""

    max_s: torch.Tensor
    """(s,) upper edge of each latent's bins (its largest activation seen in the first pass)."""
    n_bins: int = DEFAULT_BINS
    """Bins above zero."""

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")
        s = self.max_s.shape[0]
        self.max_s = self.max_s.double().clamp_min(1e-12)
        self.total_sb = torch.zeros(s, self.n_bins + 1, dtype=torch.float64)
        self.pos_fsb: torch.Tensor | None = None
        self.n_pos_f: torch.Tensor | None = None

    def bin_of(self, acts_ns: torch.Tensor) -> torch.Tensor:
        """Bin index of every activation (0 when ``a <= 0``)."""
        a = acts_ns.double()
        b = torch.ceil(a / self.max_s * self.n_bins).clamp(1, self.n_bins).long()
        return torch.where(a > 0, b, torch.zeros_like(b))

    def add(self, acts_ns: torch.Tensor, labels_nf: torch.Tensor) -> None:
        """Count a batch: ``acts_ns`` latent activations, ``labels_nf`` bool factor labels."""
        n, s = acts_ns.shape
        f = labels_nf.shape[1]
        if self.pos_fsb is None or self.n_pos_f is None:
            self.pos_fsb = torch.zeros(f, s, self.n_bins + 1, dtype=torch.float64)
            self.n_pos_f = torch.zeros(f, dtype=torch.float64)
        pos_fsb, n_pos_f = self.pos_fsb, self.n_pos_f
        width = self.n_bins + 1
        flat_ns = self.bin_of(acts_ns) + torch.arange(s).mul(width)
        self.total_sb += torch.bincount(flat_ns.reshape(-1), minlength=s * width).view(s, width)
        labels_nf = labels_nf.bool()
        for k in range(f):
            rows = flat_ns[labels_nf[:, k]]
            if len(rows):
                pos_fsb[k] += torch.bincount(rows.reshape(-1), minlength=s * width).view(s, width)
        n_pos_f += labels_nf.sum(0).double()

    @property
    def n_positive_f(self) -> torch.Tensor:
        """Rows labelled positive for each factor so far."""
        if self.n_pos_f is None:
            raise ValueError("no rows were added")
        return self.n_pos_f

    def scores(self) -> dict[str, torch.Tensor]:
        """``auroc_sf``, ``f1_sf`` (best threshold), ``threshold_sf`` (act > this), ``precision_sf`` and
        ``recall_sf`` of "fires at all" (bin >= 1)."""
        if self.pos_fsb is None:
            raise ValueError("no rows were added")
        pos_sfb = self.pos_fsb.permute(1, 0, 2)
        neg_sfb = self.total_sb[:, None, :] - pos_sfb
        return {
            "auroc_sf": auroc_from_histograms(pos_sfb, neg_sfb),
            **best_f1_from_histograms(pos_sfb, neg_sfb, self.max_s, self.n_bins),
        }


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
    edge = max_x.view(-1, *([1] * (t_x.dim() - 1))) * t_x.double() / n_bins
    fires = tp_xt[..., 0] + fp_xt[..., 0]
    precision = tp_xt[..., 0] / fires.clamp_min(1e-12)
    recall = tp_xt[..., 0] / n_pos.squeeze(-1).clamp_min(1e-12)
    return {"f1_sf": f1_x, "threshold_sf": edge, "precision_sf": precision, "recall_sf": recall}


def feature_recovery(
    auroc_sf: torch.Tensor, f1_sf: torch.Tensor, *, f1_threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Per factor: the best single latent by AUROC and by F1, and whether the factor is recovered
    (its best F1 reaches ``f1_threshold``)."""
    auroc = torch.nan_to_num(auroc_sf, nan=0.0)
    best_auroc_f, latent_auroc_f = auroc.max(0)
    best_f1_f, latent_f1_f = f1_sf.max(0)
    return {
        "best_auroc_f": best_auroc_f,
        "latent_auroc_f": latent_auroc_f,
        "best_f1_f": best_f1_f,
        "latent_f1_f": latent_f1_f,
        "recovered_f": best_f1_f >= f1_threshold,
    }


@torch.no_grad()
def reference_scores(sae, rows, truth, layout, *, n_bins: int) -> dict:
    """The pre-issue-27 recovery pass: full patch- and image-level histograms of every (latent, factor)
    pair, fed batch by batch (edges from each latent's largest patch activation, as before)."""
    batches = []
    for r in rows():
        keep = r.token_idx >= layout.n_prefix
        feats = sae.encode(r.acts[keep].float()).float()
        batches.append((feats, r.image_idx[keep].long(), r.token_idx[keep].long() - layout.n_prefix))
    max_s = torch.cat([f for f, _, _ in batches]).double().max(0).values
    patch = LatentFactorHistogram(max_s.clone(), n_bins=n_bins)
    image = LatentFactorHistogram(max_s.clone(), n_bins=n_bins)
    image_max: dict[int, torch.Tensor] = {}
    for feats, image_n, patch_n in batches:
        labels = np.stack(
            [truth.patch_factors(int(i))[int(p)] for i, p in zip(image_n, patch_n, strict=True)]
        )
        patch.add(feats, torch.from_numpy(labels))
        for i in image_n.unique().tolist():
            part = feats[image_n == i].max(0).values
            image_max[i] = part if i not in image_max else torch.maximum(image_max[i], part)
    order = sorted(image_max)
    image.add(torch.stack([image_max[i] for i in order]),
              torch.from_numpy(np.stack([np.asarray(truth.image_factors(i), dtype=bool) for i in order])))  # fmt: skip
    return {"patch": patch, "image": image}
