"""Localization of each factor's best latent: IoU on the patch grid and the pointing game.

Runs over one stream of encoded batches (``acts``, ``feats``, ``patch_n``, ``groups`` as the scorer's
``_Batch``) in (image, token) order, holding one image's grid of the chosen latents at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from vision_sae_lens.benchmark.metrics import mask_iou
from vision_sae_lens.benchmark.truth import GroundTruth
from vision_sae_lens.layout import Layout


def localization(
    batches: Iterable[Any],
    truth: GroundTruth,
    layout: Layout,
    latents_f: torch.Tensor,
    thresholds_f: torch.Tensor,
    names: list[str],
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

    for batch in batches:
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
