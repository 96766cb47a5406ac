"""Score one SAE against ground truth by streaming the store's ordered rows, pass after pass.

1. reconstruction (FVU, L0, dead / dense, shrinkage), SynthSAEBench's metrics when the truth has
   feature directions, the per-image mean latents / activations of a seeded random subset of images
   for sparse probing, and the counting pass of feature recovery;
2. feature recovery at the patch level and, from each image's per-latent maximum over its patches, at
   the image level (plain rows: the row level only): AUROC, best F1 and its threshold, precision /
   recall, splitting, mixing. :class:`~vision_sae_lens.benchmark.recovery.FactorRecovery` needs two
   passes, and more only when many (latent, factor) pairs compete for a factor's best F1;
3. localization of each factor's best latent (by patch AUROC) against the factor's pixel masks.

Memory is a function of the SAE width, the number of factors, ``probe_images`` and
``pair_budget_mib`` only, never of the number of rows: batches are encoded, folded into accumulators
and dropped. No accumulator grows with latents x factors x bins (docs/benchmark.md, "Cost").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vision_sae_lens.benchmark.localization import localization
from vision_sae_lens.benchmark.metrics import ReconstructionAccumulator
from vision_sae_lens.benchmark.recovery import FactorRecovery, label_pairs
from vision_sae_lens.benchmark.summaries import (
    image_labels,
    probing,
    recovery_result,
    recovery_summary,
    splitting,
)
from vision_sae_lens.benchmark.truth import GroundTruth
from vision_sae_lens.errors import ConfigError
from vision_sae_lens.layout import Layout, RowLayout

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
    pair_budget_mib: int = 256
    """Memory for the full histograms of candidate (latent, factor) pairs per pass, shared by the levels
    (about 2 KiB per pair at 256 bins): more candidates than fit take more passes, never more memory."""

    def __post_init__(self) -> None:
        for name in ("f1_threshold", "precision_threshold", "recall_threshold", "dense_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.n_bins < 1 or self.batch_size < 1 or self.pair_budget_mib < 1:
            raise ConfigError("n_bins, batch_size and pair_budget_mib must be >= 1")
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
    layout: Layout,
    n_images: int,
    config: ScoreConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """All ground-truth metrics of ``sae`` on the rows ``rows()`` yields (see the module docstring).

    ``layout`` maps token indices to patches; rows of prefix tokens (CLS, registers) are ignored. With a
    :class:`~vision_sae_lens.layout.RowLayout` every row is an example of its own (no image level, no
    localization, no probing). ``truth`` labels the images by their index in the rows' ``image_idx``;
    a truth with ``directions`` (:class:`~vision_sae_lens.benchmark.truth.ActivationTruth`) adds
    SynthSAEBench's metrics under ``"synthsaebench"``.
    """
    cfg = config or ScoreConfig()
    names = list(truth.factor_names)
    plain = isinstance(layout, RowLayout)
    levels = ("row",) if plain else ("patch", "image")
    first = _FirstPass(sae, truth, levels, n_images=0 if plain else n_images, cfg=cfg)
    for batch in _encoded(sae, rows, layout, desc="1 reconstruction", progress=progress):
        first.add(batch)
    if first.recon is None or first.recoveries is None:
        raise ConfigError("the rows hold no rows to score (only prefix tokens, or none at all)")
    if not plain:
        _flush_image_level(first.recoveries["image"], first.image_max, truth)
    recoveries = {level: first.recoveries[level] for level in levels}
    for r in recoveries.values():
        r.end_pass()
    _run_passes(sae, rows, layout, truth, recoveries, progress=progress)

    report: dict[str, Any] = {
        "factors": names,
        "reconstruction": first.recon.result(dense_threshold=cfg.dense_threshold),
    }
    if first.directions is not None:
        report["synthsaebench"] = first.directions.result()
    results = {level: recovery_result(r, cfg) for level, r in recoveries.items()}
    report["recovery"] = {level: recovery_summary(res, names, cfg) for level, res in results.items()}
    unit = recoveries[levels[0]]
    report["splitting"] = splitting(unit, names, cfg)
    if plain:
        report["localization"] = {"available": False, "reason": "plain rows have no image grid"}
        report["probing"] = {"available": False, "reason": "plain rows have no images"}
        return report
    latents_f = results["patch"]["latent_auroc_f"]
    unit.request_thresholds(latents_f)
    _run_passes(sae, rows, layout, truth, {"patch": unit}, progress=progress)
    thresholds_f = unit.thresholds_of(latents_f)
    report["localization"] = localization(
        _encoded(sae, rows, layout, desc="3 localization", progress=progress),
        truth, layout, latents_f, thresholds_f, names,
    )  # fmt: skip
    report["probing"] = probing(first.probe, truth, names, cfg)
    return report


# ----------------------------------------------------------------------------------- passes
@dataclass
class _Batch:
    acts: torch.Tensor
    feats: torch.Tensor
    recon: torch.Tensor
    image_n: torch.Tensor
    patch_n: torch.Tensor
    groups: list[tuple[int, int, int]] | None
    """(image, lo, hi): consecutive rows of one image (None for plain rows: every row is its own)."""


ENCODE_ELEMENTS = 2**25
"""Rows are encoded in slices of at most this many (row, latent) values (128 MiB of float32 latents), so
the per-batch memory of a wide SAE does not grow with ``batch_size`` x latents."""


def _encoded(sae: SAE, rows: RowsFn, layout: Layout, *, desc: str, progress: bool) -> Iterator[_Batch]:
    device = next(iter(sae.parameters())).device
    step = 0
    for r in tqdm(rows(), desc=desc, unit="batch", disable=not progress, leave=False):
        keep = r.token_idx >= layout.n_prefix
        if not bool(keep.all()):
            r = type(r)(r.acts[keep], r.image_idx[keep], r.token_idx[keep])
        if step == 0 and len(r.acts):
            step = max(1, ENCODE_ELEMENTS // int(sae.encode(r.acts[:1].float().to(device)).shape[1]))
        for lo in range(0, len(r.acts), max(step, 1)):
            acts = r.acts[lo : lo + step].float().to(device)
            feats = sae.encode(acts)
            recon = sae.decode(feats)
            image_n = r.image_idx[lo : lo + step].long()
            yield _Batch(acts.cpu(), feats.float().cpu(), recon.float().cpu(), image_n,
                         r.token_idx[lo : lo + step].long() - layout.n_prefix, _groups(image_n, layout))  # fmt: skip


def _groups(image_n: torch.Tensor, layout: Layout) -> list[tuple[int, int, int]] | None:
    """(image, lo, hi) runs of consecutive rows of one image (None for plain rows)."""
    if isinstance(layout, RowLayout):
        return None
    values, counts = torch.unique_consecutive(image_n, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    starts = [0, *ends[:-1]]
    return [(int(v), lo, hi) for v, lo, hi in zip(values.tolist(), starts, ends, strict=False)]


class _FirstPass:
    """Reconstruction, SynthSAEBench metrics, probe sums and recovery counts, in one pass."""

    def __init__(
        self, sae: SAE, truth: GroundTruth, levels: tuple[str, ...], *, n_images: int, cfg: ScoreConfig
    ) -> None:
        self.sae, self.truth, self.cfg, self.levels = sae, truth, cfg, levels
        self.probe_set = _probe_subset(n_images, cfg) if n_images else set()
        self.probe: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # image -> (feats, acts, rows)
        self.recon: ReconstructionAccumulator | None = None
        self.recoveries: dict[str, FactorRecovery] | None = None
        self.image_max = _ImageMax()
        self.directions: Any = None
        if getattr(truth, "directions", None) is not None:
            from vision_sae_lens.benchmark.directions import SynthSAEBenchMetrics

            self.directions = SynthSAEBenchMetrics(sae, truth.directions)  # type: ignore[attr-defined]

    def add(self, batch: _Batch) -> None:
        if self.recon is None or self.recoveries is None:
            s, f = batch.feats.shape[1], len(self.truth.factor_names)
            self.recon = ReconstructionAccumulator(batch.acts.shape[1], s)
            budget = self.cfg.pair_budget_mib * 2**20 // len(self.levels)
            self.recoveries = {
                level: FactorRecovery(s, f, n_bins=self.cfg.n_bins, pair_budget_bytes=budget)
                for level in self.levels
            }
        self.recon.add(batch.acts, batch.recon, batch.feats)
        if self.directions is not None:
            features = self.truth.feature_activations(batch.image_n)  # type: ignore[attr-defined]
            self.directions.add(batch.acts, batch.recon, batch.feats, features)
        if batch.groups is None:
            self.recoveries["row"].add(batch.feats, *_unit_pairs(self.truth, batch))
            return
        self.recoveries["patch"].add(batch.feats, *_unit_pairs(self.truth, batch))
        _add_image_level(self.recoveries["image"], self.image_max, self.truth, batch)
        for image, lo, hi in batch.groups:
            if image in self.probe_set:
                prev = self.probe.get(image)
                feats_f, acts_d = batch.feats[lo:hi].sum(0).double(), batch.acts[lo:hi].sum(0).double()
                self.probe[image] = (
                    (feats_f, acts_d, hi - lo)
                    if prev is None
                    else (prev[0] + feats_f, prev[1] + acts_d, prev[2] + hi - lo)
                )


def _run_passes(
    sae: SAE, rows: RowsFn, layout: Layout, truth: GroundTruth, recoveries: dict[str, FactorRecovery],
    *, progress: bool,
) -> None:  # fmt: skip
    """Stream the rows until every recovery in ``recoveries`` is done."""
    while not all(r.done for r in recoveries.values()):
        todo = {level: r for level, r in recoveries.items() if not r.done}
        image_max = _ImageMax()
        desc = f"2 recovery ({', '.join(f'{lvl} {r.phase}' for lvl, r in todo.items())})"
        for batch in _encoded(sae, rows, layout, desc=desc, progress=progress):
            for level, r in todo.items():
                if level == "image":
                    _add_image_level(r, image_max, truth, batch)
                else:
                    r.add(batch.feats, *_unit_pairs(truth, batch))
        if "image" in todo:
            _flush_image_level(todo["image"], image_max, truth)
        for r in todo.values():
            r.end_pass()


def _unit_pairs(truth: GroundTruth, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch row, factor) pairs of the positive labels of each patch (or plain row)."""
    fast = getattr(truth, "factor_pairs", None)
    if fast is not None:
        return fast(batch.image_n, batch.patch_n)
    assert batch.groups is not None, "plain rows need a truth with factor_pairs"
    out = np.zeros((len(batch.acts), len(truth.factor_names)), dtype=bool)
    for image, lo, hi in batch.groups:
        out[lo:hi] = truth.patch_factors(image)[batch.patch_n[lo:hi].numpy()]
    return label_pairs(torch.from_numpy(out))


def _add_image_level(rec: FactorRecovery, image_max: _ImageMax, truth: GroundTruth, batch: _Batch) -> None:
    _add_images(rec, truth, *image_max.add(batch))


def _flush_image_level(rec: FactorRecovery, image_max: _ImageMax, truth: GroundTruth) -> None:
    _add_images(rec, truth, *image_max.flush())


def _add_images(rec: FactorRecovery, truth: GroundTruth, images: list[int], max_ks: torch.Tensor) -> None:
    if images:
        rec.add(max_ks, *label_pairs(image_labels(truth, images)))


def _probe_subset(n_images: int, cfg: ScoreConfig) -> set[int]:
    rng = np.random.default_rng(cfg.seed)
    take = min(cfg.probe_images, n_images)
    return set(rng.choice(n_images, size=take, replace=False).tolist())


class _ImageMax:
    """Per-image maximum of each latent over its patches; an image may span batches."""

    def __init__(self) -> None:
        self.image: int | None = None
        self.max_s: torch.Tensor | None = None

    def add(self, batch: _Batch) -> tuple[list[int], torch.Tensor]:
        """The images finished by this batch and their maxima; the batch's last image stays open."""
        groups = batch.groups or []
        # Each image's rows are consecutive: lay them out as (images, longest, latents), pad with -inf.
        starts = torch.tensor([lo for _, lo, _ in groups], dtype=torch.long)
        counts = torch.tensor([hi - lo for _, lo, hi in groups], dtype=torch.long)
        group_n = torch.repeat_interleave(torch.arange(len(groups)), counts)
        within_n = torch.arange(len(group_n)) - starts[group_n]
        padded = torch.full(
            (len(groups), int(counts.max()) if len(groups) else 0, batch.feats.shape[1]), -torch.inf
        )
        padded[group_n, within_n] = batch.feats
        max_gs = padded.max(1).values
        images = [image for image, _, _ in groups]
        if self.image is not None and self.max_s is not None:
            if images and images[0] == self.image:
                max_gs[0] = torch.maximum(max_gs[0], self.max_s)
            else:
                images, max_gs = [self.image, *images], torch.cat([self.max_s[None], max_gs])
        if not images:
            return [], max_gs
        self.image, self.max_s = images[-1], max_gs[-1]
        return images[:-1], max_gs[:-1]

    def flush(self) -> tuple[list[int], torch.Tensor]:
        """The open image, if any."""
        if self.image is None or self.max_s is None:
            return [], torch.zeros(0)
        out = ([self.image], self.max_s[None])
        self.image, self.max_s = None, None
        return out
