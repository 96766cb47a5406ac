"""Score one SAE against ground truth by streaming the store's ordered rows three times.

1. reconstruction (FVU, L0, dead / dense), each latent's largest activation, and the per-image mean
   latents / activations of a seeded random subset of images for sparse probing;
2. per (latent, factor) activation histograms at the patch level and, from each image's per-latent
   maximum over its patches, at the image level: AUROC, best F1, precision / recall, splitting, mixing;
3. localization of each factor's best latent (by patch AUROC) against the factor's pixel masks.

Memory is a function of the SAE width, the number of factors and ``probe_images`` only, never of the
number of rows: batches are encoded, folded into fixed-size accumulators and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vision_sae_lens.benchmark.metrics import (
    LatentFactorHistogram,
    ReconstructionAccumulator,
    feature_recovery,
    mask_iou,
    splitting_and_mixing,
)
from vision_sae_lens.benchmark.probing import sparse_probing
from vision_sae_lens.benchmark.truth import GroundTruth
from vision_sae_lens.errors import ConfigError
from vision_sae_lens.layout import TokenLayout

if TYPE_CHECKING:
    from vision_sae_lens.compat import SAE

logger = logging.getLogger(__name__)

RowsFn = Callable[[], Iterator[Any]]
"""Returns a fresh iterator of ``Rows(acts, image_idx, token_idx)`` in (image, token) order."""


@dataclass(frozen=True)
class ScoreConfig:
    """Thresholds and budgets of the ground-truth metrics (defaults documented in docs/benchmark.md)."""

    n_bins: int = 256
    """Activation bins per latent above zero (AUROC / F1 resolution)."""
    f1_threshold: float = 0.5
    """A factor is recovered when its best single latent reaches this F1; a latent detects a factor
    (monosemanticity) at this F1."""
    precision_threshold: float = 0.8
    """Splitting: a latent is part of a factor when at least this share of its firings carry it ..."""
    recall_threshold: float = 0.05
    """... and it fires on at least this share of the factor's examples."""
    dense_threshold: float = 0.1
    """A latent is dense when it fires on more than this share of rows (dead: never fires)."""
    probe_ks: tuple[int, ...] = (1, 2, 5, 10)
    """Sizes of the k-sparse probes."""
    probe_images: int = 1000
    """Images (seeded random subset) whose mean latents / activations feed the probes; half train them."""
    batch_size: int = 4096
    """Rows read and encoded at a time."""
    seed: int = 0
    """Seed of the probe subset and its train/test halves."""

    def __post_init__(self) -> None:
        for name in ("f1_threshold", "precision_threshold", "recall_threshold", "dense_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.n_bins < 1 or self.batch_size < 1:
            raise ConfigError("n_bins and batch_size must be >= 1")
        if not self.probe_ks or min(self.probe_ks) < 1:
            raise ConfigError(f"probe_ks must be positive sizes, got {self.probe_ks}")
        if self.probe_images < 4:
            raise ConfigError(f"probe_images must be >= 4 (two per half), got {self.probe_images}")


@torch.no_grad()
def score_rows(
    sae: SAE,
    rows: RowsFn,
    truth: GroundTruth,
    *,
    layout: TokenLayout,
    n_images: int,
    config: ScoreConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """All ground-truth metrics of ``sae`` on the rows ``rows()`` yields (see the module docstring).

    ``layout`` maps token indices to patches; rows of prefix tokens (CLS, registers) are ignored.
    ``truth`` labels the images by their index in the rows' ``image_idx``.
    """
    cfg = config or ScoreConfig()
    names = list(truth.factor_names)
    probe_set = _probe_subset(n_images, cfg)
    recon: ReconstructionAccumulator | None = None
    probe: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # image -> (feature sum, act sum, rows)
    for batch in _encoded(sae, rows, layout, desc="1/3 reconstruction", progress=progress):
        if recon is None:
            recon = ReconstructionAccumulator(batch.acts.shape[1], batch.feats.shape[1])
        recon.add(batch.acts, batch.recon, batch.feats)
        for image, lo, hi in batch.groups:
            if image in probe_set:
                prev = probe.get(image)
                feats_f, acts_d = batch.feats[lo:hi].sum(0).double(), batch.acts[lo:hi].sum(0).double()
                probe[image] = (
                    (feats_f, acts_d, hi - lo)
                    if prev is None
                    else (prev[0] + feats_f, prev[1] + acts_d, prev[2] + hi - lo)
                )
    if recon is None:
        raise ConfigError("the store has no rows of patch tokens to score")
    report: dict[str, Any] = {
        "factors": names,
        "reconstruction": recon.result(dense_threshold=cfg.dense_threshold),
    }
    alive_s = recon.fired_s > 0

    patch_hist = LatentFactorHistogram(recon.max_s.clone(), n_bins=cfg.n_bins)
    image_hist = LatentFactorHistogram(recon.max_s.clone(), n_bins=cfg.n_bins)
    reducer = _ImageMax()
    for batch in _encoded(sae, rows, layout, desc="2/3 recovery", progress=progress):
        patch_hist.add(batch.feats, _patch_labels(truth, batch))
        done = reducer.add(batch)
        if done:
            images, max_ns = zip(*done, strict=False)
            image_hist.add(torch.stack(max_ns), _image_labels(truth, images))
    images, max_ns = zip(*reducer.flush(), strict=False)
    image_hist.add(torch.stack(max_ns), _image_labels(truth, images))

    patch_scores, image_scores = patch_hist.scores(), image_hist.scores()
    report["recovery"] = {
        "patch": _recovery_summary(patch_scores, names, cfg),
        "image": _recovery_summary(image_scores, names, cfg),
    }
    mix = splitting_and_mixing(
        patch_scores["precision_sf"], patch_scores["recall_sf"], alive_s, prior_f=patch_hist.n_positive_f,
        family_f=_families(names), precision_threshold=cfg.precision_threshold,
        recall_threshold=cfg.recall_threshold,
    )  # fmt: skip
    report["splitting"] = _splitting_summary(mix, names, alive_s)

    rec = feature_recovery(patch_scores["auroc_sf"], patch_scores["f1_sf"], f1_threshold=cfg.f1_threshold)
    latents_f = rec["latent_auroc_f"]
    thresholds_f = patch_scores["threshold_sf"][latents_f, torch.arange(len(names))]
    report["localization"] = _localization(
        sae, rows, truth, layout, latents_f, thresholds_f, names, progress=progress
    )
    report["probing"] = _probing(probe, truth, names, cfg)
    return report


# ----------------------------------------------------------------------------------- passes
@dataclass
class _Batch:
    acts: torch.Tensor
    feats: torch.Tensor
    recon: torch.Tensor
    image_n: torch.Tensor
    patch_n: torch.Tensor
    groups: list[tuple[int, int, int]]
    """(image, lo, hi): consecutive rows of one image."""


def _encoded(sae: SAE, rows: RowsFn, layout: TokenLayout, *, desc: str, progress: bool) -> Iterator[_Batch]:
    device = next(iter(sae.parameters())).device
    for r in tqdm(rows(), desc=desc, unit="batch", disable=not progress, leave=False):
        keep = r.token_idx >= layout.n_prefix
        if not bool(keep.all()):
            r = type(r)(r.acts[keep], r.image_idx[keep], r.token_idx[keep])
        if len(r.acts) == 0:
            continue
        acts = r.acts.float().to(device)
        feats = sae.encode(acts)
        recon = sae.decode(feats)
        image_n = r.image_idx.long()
        values, counts = torch.unique_consecutive(image_n, return_counts=True)
        ends = torch.cumsum(counts, 0).tolist()
        starts = [0, *ends[:-1]]
        groups = [(int(v), lo, hi) for v, lo, hi in zip(values.tolist(), starts, ends, strict=False)]
        yield _Batch(acts.cpu(), feats.float().cpu(), recon.float().cpu(), image_n,
                     r.token_idx.long() - layout.n_prefix, groups)  # fmt: skip


class _ImageMax:
    """Per-image maximum of each latent over its patches; an image may span batches."""

    def __init__(self) -> None:
        self.image: int | None = None
        self.max_s: torch.Tensor | None = None

    def add(self, batch: _Batch) -> list[tuple[int, torch.Tensor]]:
        done = []
        for image, lo, hi in batch.groups:
            part = batch.feats[lo:hi].max(0).values
            if image == self.image and self.max_s is not None:
                self.max_s = torch.maximum(self.max_s, part)
                continue
            if self.image is not None and self.max_s is not None:
                done.append((self.image, self.max_s))
            self.image, self.max_s = image, part
        return done

    def flush(self) -> list[tuple[int, torch.Tensor]]:
        return [] if self.image is None or self.max_s is None else [(self.image, self.max_s)]


def _patch_labels(truth: GroundTruth, batch: _Batch) -> torch.Tensor:
    out = np.zeros((len(batch.acts), len(truth.factor_names)), dtype=bool)
    for image, lo, hi in batch.groups:
        out[lo:hi] = truth.patch_factors(image)[batch.patch_n[lo:hi].numpy()]
    return torch.from_numpy(out)


def _image_labels(truth: GroundTruth, images: Any) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(truth.image_factors(i), dtype=bool) for i in images]))


def _families(names: list[str]) -> torch.Tensor:
    """Family index of each factor: the part before ``=`` (``color=red`` -> ``color``); a name without
    ``=`` is a family of its own."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(n.split("=")[0] if "=" in n else n, len(index)) for n in names])


def _probe_subset(n_images: int, cfg: ScoreConfig) -> set[int]:
    rng = np.random.default_rng(cfg.seed)
    take = min(cfg.probe_images, n_images)
    return set(rng.choice(n_images, size=take, replace=False).tolist())


# ---------------------------------------------------------------------------------- summaries
def _recovery_summary(scores: dict[str, torch.Tensor], names: list[str], cfg: ScoreConfig) -> dict[str, Any]:
    rec = feature_recovery(scores["auroc_sf"], scores["f1_sf"], f1_threshold=cfg.f1_threshold)
    per_factor = {
        name: {
            "auroc": float(rec["best_auroc_f"][k]),
            "auroc_latent": int(rec["latent_auroc_f"][k]),
            "f1": float(rec["best_f1_f"][k]),
            "f1_latent": int(rec["latent_f1_f"][k]),
            "recovered": bool(rec["recovered_f"][k]),
        }
        for k, name in enumerate(names)
    }
    return {
        "mean_auroc": float(rec["best_auroc_f"].mean()),
        "mean_f1": float(rec["best_f1_f"].mean()),
        "fraction_recovered": float(rec["recovered_f"].double().mean()),
        "f1_threshold": cfg.f1_threshold,
        "per_factor": per_factor,
    }


def _splitting_summary(
    mix: dict[str, torch.Tensor], names: list[str], alive_s: torch.Tensor
) -> dict[str, Any]:
    responsive = mix["responsive_s"]
    per_latent = mix["factors_per_latent_s"][responsive]
    per_factor = mix["latents_per_factor_f"]
    return {
        "latents_per_factor": {name: int(per_factor[k]) for k, name in enumerate(names)},
        "mean_latents_per_factor": float(per_factor.double().mean()),
        "factors_split": float((per_factor > 1).double().mean()),
        "responsive_latents": int(responsive.sum()),
        "mean_factors_per_latent": float(per_latent.mean()) if len(per_latent) else 0.0,
        "monosemantic_fraction": float((per_latent <= 1.5).double().mean()) if len(per_latent) else 0.0,
        "mean_purity": float(mix["purity_s"][alive_s].mean()) if bool(alive_s.any()) else 0.0,
    }


def _localization(
    sae: SAE,
    rows: RowsFn,
    truth: GroundTruth,
    layout: TokenLayout,
    latents_f: torch.Tensor,
    thresholds_f: torch.Tensor,
    names: list[str],
    *,
    progress: bool,
) -> dict[str, Any]:
    """IoU and pointing game of each factor's best latent on the images that carry the factor.

    IoU compares, on the patch grid, the patches where the latent exceeds its best-F1 threshold with the
    patches that carry the factor (the resolution an SAE on patch tokens can express). The pointing game
    counts a hit when the latent's strongest patch holds a pixel of the factor's masks (its patch labels
    without masks); a latent silent on the image misses.
    """
    f = len(names)
    hits, ious, counts = np.zeros(f), np.zeros(f), np.zeros(f)
    grid_w = layout.grid[1]
    ph, pw = layout.patch_size
    current: tuple[int, torch.Tensor] | None = None

    def finish(image: int, grid_pf: torch.Tensor) -> None:
        present = np.asarray(truth.image_factors(image), dtype=bool)
        labels_pf = torch.from_numpy(np.ascontiguousarray(truth.patch_factors(image), dtype=bool))
        masks = truth.pixel_masks(image)
        for k in np.flatnonzero(present):
            counts[k] += 1
            g = grid_pf[:, k]
            if float(g.max()) > 0:
                p = int(torch.argmax(g))
                if masks is None:
                    hits[k] += bool(labels_pf[p, k])
                else:
                    r, c = divmod(p, grid_w)
                    hits[k] += bool(masks[k, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw].any())
            ious[k] += mask_iou(g > float(thresholds_f[k]), labels_pf[:, k])

    for batch in _encoded(sae, rows, layout, desc="3/3 localization", progress=progress):
        sel_nf = batch.feats[:, latents_f]
        for image, lo, hi in batch.groups:
            if current is None or current[0] != image:
                if current is not None:
                    finish(*current)
                current = (image, torch.zeros(layout.n_patches, f))
            current[1][batch.patch_n[lo:hi]] = sel_nf[lo:hi]
    if current is not None:
        finish(*current)
    if not counts.any():
        return {"available": False}
    valid = counts > 0
    per_factor = {
        name: {
            "latent": int(latents_f[k]),
            "iou": float(ious[k] / counts[k]) if valid[k] else None,
            "pointing": float(hits[k] / counts[k]) if valid[k] else None,
            "images": int(counts[k]),
        }
        for k, name in enumerate(names)
    }
    return {
        "available": True,
        "mean_iou": float((ious[valid] / counts[valid]).mean()),
        "pointing_game": float((hits[valid] / counts[valid]).mean()),
        "per_factor": per_factor,
    }


def _probing(probe: dict, truth: GroundTruth, names: list[str], cfg: ScoreConfig) -> dict[str, Any]:
    images = sorted(probe)
    if len(images) < 4:
        return {"available": False}
    latents = torch.stack([probe[i][0] / probe[i][2] for i in images])
    raw = torch.stack([probe[i][1] / probe[i][2] for i in images])
    labels = _image_labels(truth, images)
    rng = np.random.default_rng(cfg.seed + 1)
    order = rng.permutation(len(images))
    train, test = order[: len(images) // 2], order[len(images) // 2 :]
    out: dict[str, Any] = {"available": True, "ks": list(cfg.probe_ks), "images": len(images)}
    for kind, x in (("sae", latents), ("raw", raw)):
        acc_kf = sparse_probing(x[train], labels[train], x[test], labels[test], ks=cfg.probe_ks)
        out[kind] = [float(np.nanmean(row)) for row in acc_kf]
        out[f"{kind}_per_factor"] = {name: [float(v) for v in acc_kf[:, j]] for j, name in enumerate(names)}
    out["majority_baseline"] = float(
        torch.maximum(labels[test].double().mean(0), 1 - labels[test].double().mean(0)).mean()
    )
    return out
