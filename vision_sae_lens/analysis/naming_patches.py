"""Patch-level names where masks exist: a latent's firing on each patch against each concept's patch mask.

Image-level naming asks on which *images* a latent fires; where per-patch concept masks exist (a
segmentation dataset, the shapes world's pixel masks) naming can ask on which *patches*, as Network
Dissection does. ``patch_labels(image)`` gives an image's ``(n_patches, L)`` bool masks in row-major
patch order (the store's patch grid); one scan counts, separately over the naming and the held-out
probe images, the patches each latent fires on, each label's patches and the patches where both hold
(``d_sae x L`` integers, never ``patches x d_sae``). The name is the label with the best patch-level
F1 (precision: share of the latent's firing patches inside the mask; recall: share of the mask's
patches it fires on), and its detection AUROC is measured on the held-out images' patches: the mask
as a score for "the latent fires on this patch", which for a 0/1 score is
``(1 + P(mask | fires) - P(mask | does not fire)) / 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vision_sae_lens.analysis.naming_probe import ProbeSplit
from vision_sae_lens.analysis.stats import best_f1_labels
from vision_sae_lens.errors import ConfigError

_FLOAT_CHUNK = 2**24
"""Float32 elements (64 MiB) of one (rows x latents) slice multiplied with the masks."""

PatchLabels = Callable[[int], Any]
"""``patch_labels(image)`` -> ``(n_patches, L)`` bool masks of store image ``image``."""


class PatchLabelCounts:
    """Scan consumer: per latent and label, patch counts on the naming and on the held-out images."""

    def __init__(
        self,
        d_sae: int,
        split: ProbeSplit,
        patch_labels: PatchLabels,
        *,
        n_labels: int,
        n_prefix: int,
        n_patches: int,
    ) -> None:
        self.patch_labels, self.n_labels = patch_labels, n_labels
        self.n_prefix, self.n_patches = n_prefix, n_patches
        self.part = {int(i): 0 for i in split.naming} | {int(i): 1 for i in split.heldout}
        self.both_psl = torch.zeros(2, d_sae, n_labels, dtype=torch.long)
        """[naming, held-out]: patches where the latent fires and the label holds."""
        self.fires_ps = torch.zeros(2, d_sae, dtype=torch.long)
        self.label_pl = torch.zeros(2, n_labels, dtype=torch.long)
        self.patches_p = torch.zeros(2, dtype=torch.long)

    def rows(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> None:
        patch_n = token_n.long() - self.n_prefix
        images, where = torch.unique(image_n, return_inverse=True)
        part_m = torch.tensor([self.part.get(int(i), -1) for i in images.tolist()])
        keep_n = (patch_n >= 0) & (patch_n < self.n_patches) & (part_m[where] >= 0)  # probe images' patches
        if not bool(keep_n.any()):
            return
        masks_m = torch.zeros(len(images), self.n_patches, self.n_labels, dtype=torch.bool)
        for m in torch.unique(where[keep_n]).tolist():
            masks_m[m] = self._masks(int(images[m]))
        labels_nl = masks_m[where[keep_n], patch_n[keep_n]]
        fires_ns = feats_ns[keep_n] > 0
        part_n = part_m[where[keep_n]]
        for p in (0, 1):
            keep = part_n == p
            if bool(keep.any()):
                fires, lab = fires_ns[keep], labels_nl[keep].float()
                # float32 products of 0/1 are exact below 2**24 patches per batch; a float copy of a
                # slice of latents at a time (the batch's bool firing is already rows x latents)
                step = max(1, _FLOAT_CHUNK // len(fires))
                for a in range(0, fires.shape[1], step):
                    self.both_psl[p, a : a + step] += (fires[:, a : a + step].T.float() @ lab).round().long()
                self.fires_ps[p] += fires.sum(0)
                self.label_pl[p] += labels_nl[keep].sum(0)
                self.patches_p[p] += int(keep.sum())

    def images(self, red: Any) -> None:
        pass

    def names(self, n_best: int) -> dict[str, torch.Tensor]:
        """``best_f1_labels`` on the naming patches, plus ``auroc_s``: the best label's detection AUROC
        on the held-out patches (NaN when the latent fires on none or all of them, or has no name)."""
        best = best_f1_labels(self.both_psl[0], self.fires_ps[0], self.label_pl[0], n_best=n_best)
        label_s = best["label_sr"][:, 0]
        both = self.both_psl[1].gather(1, label_s.clamp(min=0)[:, None])[:, 0].double()
        fires, total = self.fires_ps[1].double(), float(self.patches_p[1])
        in_mask = self.label_pl[1][label_s.clamp(min=0)].double()
        auroc = 0.5 * (1 + both / fires - (in_mask - both) / (total - fires))
        undefined = (fires == 0) | (fires == total) | (label_s < 0)
        return {**best, "auroc_s": torch.where(undefined, torch.nan, auroc).float()}

    def _masks(self, image: int) -> torch.Tensor:
        masks = np.asarray(self.patch_labels(image))
        if masks.shape != (self.n_patches, self.n_labels):
            raise ConfigError(
                f"patch_labels({image}) gave shape {masks.shape}; expected (n_patches, labels) = "
                f"({self.n_patches}, {self.n_labels}) on the store's patch grid, in row-major patch order"
            )
        return torch.from_numpy(masks.astype(bool))
