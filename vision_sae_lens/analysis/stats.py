"""Feature statistics: how often each latent fires, how strongly, and which label it tracks.

One streaming pass (see :mod:`vision_sae_lens.analysis.scan`) accumulates, per latent: the number of
tokens and images where it fires (> 0), the sum and max of its activation, and a histogram of its
non-zero activations on fixed log-spaced bins (quantiles and the browser's histogram come from it;
memory O(d_sae x bins)). With labels per image, it counts the images where each latent fires per
label, giving for each latent the label with the best F1 and that label's precision (of the images
where the latent fires, the fraction with that label) and recall (of the images with that label,
the fraction where the latent fires).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.analysis.scan import ImageReduction, scan
from vision_sae_lens.errors import ConfigError

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE

BIN_EDGES = torch.logspace(-4, 4, 8 * 24 + 1)
"""Histogram bin edges for non-zero activations (24 bins per decade from 1e-4 to 1e4)."""


@dataclass
class FeatureStats:
    """Per-latent statistics of an SAE over a dataset. Tensors are (d_sae,) unless noted."""

    n_rows: int
    """Tokens scanned."""
    n_images: int
    """Images scanned."""
    frequency: torch.Tensor
    """Fraction of tokens where the latent fires (> 0)."""
    image_frequency: torch.Tensor
    """Fraction of images where it fires on at least one token."""
    mean_activation: torch.Tensor
    """Mean activation over all tokens (zeros included)."""
    mean_active: torch.Tensor
    """Mean activation over the tokens where it fires (0 if it never fires)."""
    max_activation: torch.Tensor
    """Largest activation seen."""
    hist_counts: torch.Tensor
    """(d_sae, bins) counts of non-zero activations on :data:`BIN_EDGES`."""
    dead: torch.Tensor
    """Bool: never fires."""
    dense: torch.Tensor
    """Bool: fires on more than ``dense_threshold`` of tokens."""
    dense_threshold: float
    """Token frequency above which a latent counts as dense."""
    label_names: list[str] | None = None
    """Label names, when the dataset has labels."""
    best_label: torch.Tensor | None = None
    """int64 label with the best F1 (-1 for a latent that never fires)."""
    precision: torch.Tensor | None = None
    """P(best label | latent fires on the image)."""
    recall: torch.Tensor | None = None
    """P(latent fires on the image | best label)."""
    label_counts: torch.Tensor | None = field(default=None, repr=False)
    """(d_sae, labels) images where the latent fires, per label."""
    label_images: torch.Tensor | None = field(default=None, repr=False)
    """(labels,) images per label."""
    token_counts: torch.Tensor | None = field(default=None, repr=False)
    """(d_sae, tokens) firings per token position (sequence index): the spatial firing map."""

    def quantiles(self, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> torch.Tensor:
        """(d_sae, len(qs)) quantiles of the non-zero activations (bin resolution, about 10%; NaN if dead)."""
        cum = self.hist_counts.cumsum(1).double()
        total = cum[:, -1:]
        centres = (BIN_EDGES[:-1] * BIN_EDGES[1:]).sqrt().double()
        out = []
        for q in qs:
            idx = torch.searchsorted(cum, (q * total).clamp(min=1e-9)).clamp(max=len(centres) - 1)
            val = centres[idx.squeeze(1)]
            val = torch.minimum(val, self.max_activation.double())
            out.append(torch.where(total.squeeze(1) > 0, val, torch.nan))
        return torch.stack(out, dim=1).float()

    def summary(self) -> dict[str, Any]:
        """SAE-level numbers: dead/dense counts, mean L0, and (with labels) a monosemanticity summary."""
        alive = ~self.dead
        out: dict[str, Any] = {
            "d_sae": int(self.frequency.numel()),
            "n_rows": self.n_rows,
            "n_images": self.n_images,
            "dead": int(self.dead.sum()),
            "dense": int(self.dense.sum()),
            "l0": float(self.frequency.sum()),
        }
        if (
            self.precision is not None
            and self.recall is not None
            and self.best_label is not None
            and bool(alive.any())
        ):
            p, r = self.precision[alive], self.recall[alive]
            out.update(
                mean_best_precision=float(p.mean()),
                mean_best_recall=float(r.mean()),
                frac_precision_over_0_9=float((p > 0.9).float().mean()),
                labels_covered=int(torch.unique(self.best_label[alive]).numel()),
            )
        return out


class StatsAccumulator:
    """Consumer of a scan that accumulates :class:`FeatureStats`."""

    def __init__(self, d_sae: int, *, labels: Any = None, n_labels: int = 0) -> None:
        self.d_sae = d_sae
        self.n_rows = 0
        self.n_images = 0
        self.fire_rows = torch.zeros(d_sae, dtype=torch.long)
        self.fire_images = torch.zeros(d_sae, dtype=torch.long)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.hist = torch.zeros(d_sae * (len(BIN_EDGES) - 1), dtype=torch.long)
        self.labels = labels
        """Label per image (-1 or None: unlabelled); a list may grow while the scan runs."""
        self.label_counts = None if labels is None else torch.zeros(d_sae, n_labels, dtype=torch.long)
        self.token_counts = torch.zeros(d_sae, 1, dtype=torch.long)

    def rows(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> None:
        self.n_rows += feats_ns.shape[0]
        fires_ns = feats_ns > 0
        self.fire_rows += fires_ns.sum(0)
        self.sum += feats_ns.sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, feats_ns.amax(0))
        rows_n, latent_n = fires_ns.nonzero(as_tuple=True)
        if latent_n.numel():
            tok_n = token_n.to(torch.long)[rows_n]
            width = int(tok_n.max()) + 1
            if width > self.token_counts.shape[1]:
                self.token_counts = torch.nn.functional.pad(
                    self.token_counts, (0, width - self.token_counts.shape[1])
                )
            flat = self.token_counts.view(-1)
            flat.index_add_(0, latent_n * self.token_counts.shape[1] + tok_n, torch.ones_like(tok_n))
            nb = len(BIN_EDGES) - 1
            bins = (torch.bucketize(feats_ns[rows_n, latent_n], BIN_EDGES) - 1).clamp(0, nb - 1)
            self.hist.index_add_(0, latent_n * nb + bins, torch.ones_like(bins))

    def images(self, red: ImageReduction) -> None:
        self.n_images += red.image_idx.numel()
        fires_ms = red.max_ms > 0
        self.fire_images += fires_ms.sum(0)
        if self.label_counts is not None:
            lab_m = torch.tensor([_label(self.labels[i]) for i in red.image_idx.tolist()], dtype=torch.long)
            ok = lab_m >= 0
            if bool(ok.any()) and int(lab_m.max()) >= self.label_counts.shape[1]:
                grow = int(lab_m.max()) + 1 - self.label_counts.shape[1]
                self.label_counts = torch.nn.functional.pad(self.label_counts, (0, grow))
            self.label_counts.index_add_(1, lab_m[ok], fires_ms[ok].T.long())

    def result(self, *, dense_threshold: float, label_names: list[str] | None) -> FeatureStats:
        rows, imgs = max(self.n_rows, 1), max(self.n_images, 1)
        freq = self.fire_rows.double() / rows
        stats = FeatureStats(
            n_rows=self.n_rows,
            n_images=self.n_images,
            frequency=freq.float(),
            image_frequency=(self.fire_images.double() / imgs).float(),
            mean_activation=(self.sum / rows).float(),
            mean_active=(self.sum / self.fire_rows.clamp(min=1)).float(),
            max_activation=self.max,
            hist_counts=self.hist.view(self.d_sae, -1),
            dead=self.fire_rows == 0,
            dense=freq > dense_threshold,
            dense_threshold=dense_threshold,
            label_names=label_names,
            token_counts=self.token_counts,
        )
        if self.label_counts is not None:
            labels = torch.tensor([_label(self.labels[i]) for i in range(self.n_images)], dtype=torch.long)
            if bool((labels >= 0).any()):
                _add_selectivity(stats, self.label_counts, labels)
        return stats


def feature_stats(
    sae: SAE,
    source: Any,
    *,
    model: HookedSAEViT | None = None,
    labels: Any = None,
    selectivity: bool | None = None,
    dense_threshold: float = 0.1,
    batch_size: int = 4096,
    progress: bool = True,
) -> FeatureStats:
    """Frequency, activation statistics, dead/dense flags and per-label selectivity of every latent.

    ``source``: an ``ActivationStore`` or images with ``model=`` (as :func:`top_activating`).
    ``labels``: one int per image (default: the store's labels). ``selectivity=True`` requires labels
    and raises when there are none; ``None`` computes it when labels exist.
    """
    if not 0 < dense_threshold <= 1:
        raise ConfigError(f"dense_threshold must be in (0, 1], got {dense_threshold}")
    is_store = hasattr(source, "ordered")
    labels = labels if labels is not None else getattr(source, "labels", None) if is_store else None
    names = getattr(source, "label_names", None)
    if selectivity and labels is None and is_store:
        raise ConfigError(_NO_LABELS)
    labels_out: list[int | None] | None = [] if labels is None and not is_store else None
    if selectivity is False:
        labels = labels_out = None
    acc = StatsAccumulator(
        int(sae.cfg.d_sae), labels=labels if labels_out is None else labels_out, n_labels=len(names or [])
    )
    scan(sae, source, [acc], model=model, batch_size=batch_size, progress=progress, labels_out=labels_out)
    stats = acc.result(dense_threshold=dense_threshold, label_names=names)
    if selectivity and stats.precision is None:
        raise ConfigError(_NO_LABELS)
    return stats


_NO_LABELS = (
    "selectivity needs a label per image, and this dataset has none (e.g. a store recorded from "
    "unlabelled images). Pass labels=[...] (one int per image) or selectivity=False."
)


def _label(value: Any) -> int:
    return -1 if value is None else int(value)


def _add_selectivity(stats: FeatureStats, counts_sl: torch.Tensor, labels: torch.Tensor) -> None:
    fires_s = counts_sl.sum(1)
    per_label = torch.bincount(labels[labels >= 0], minlength=counts_sl.shape[1])
    best = best_f1_labels(counts_sl, fires_s, per_label, n_best=1)
    stats.best_label = best["label_sr"][:, 0]
    stats.precision = best["precision_sr"][:, 0]
    stats.recall = best["recall_sr"][:, 0]
    stats.label_counts = counts_sl
    stats.label_images = per_label.long()


def best_f1_labels(
    counts_sl: torch.Tensor, fires_s: torch.Tensor, per_label_l: torch.Tensor, *, n_best: int
) -> dict[str, torch.Tensor]:
    """Each latent's ``n_best`` labels by the F1 of "fires on the image" for "the image has the label".

    ``counts_sl``: images where latent s fires that carry label l; ``fires_s``: images where it fires
    (with one label per image, ``counts_sl.sum(1)``); ``per_label_l``: images carrying the label.
    Returns ``f1_sr``, ``label_sr`` (best first, ties to the lower label; NaN and -1 for a latent that
    never fires) and those labels' ``precision_sr`` / ``recall_sr``.
    """
    precision_sl = counts_sl.double() / fires_s.double().clamp(min=1)[:, None]
    recall_sl = counts_sl.double() / per_label_l.double().clamp(min=1)[None, :]
    f1_sl = 2 * precision_sl * recall_sl / (precision_sl + recall_sl).clamp(min=1e-12)
    order = f1_sl.sort(dim=1, descending=True, stable=True).indices[:, :n_best]
    never = (fires_s == 0)[:, None]
    return {
        "f1_sr": torch.where(never, torch.nan, f1_sl.gather(1, order)).float(),
        "label_sr": torch.where(never, -1, order),
        "precision_sr": precision_sl.gather(1, order).float(),
        "recall_sr": recall_sl.gather(1, order).float(),
    }
