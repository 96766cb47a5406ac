"""Helpers for the analysis tests: random SAEs, noise images, a labelled image source."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.metadata import VisionFacts, apply_vision_facts

SITE = "blocks.0.hook_resid_post"


def make_sae(model, *, d_sae: int = 48, tokens: str | None = "patches", site: str = SITE, seed: int = 1):
    """A random StandardSAE at ``site`` with vision metadata for ``tokens`` (None: no metadata)."""
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=model.d_model, d_sae=d_sae))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    sae.cfg.metadata.hook_name = site
    if tokens is not None:
        apply_vision_facts(
            sae, VisionFacts(backbone=model.backbone_id, hook_name=site, tokens=tokens, layout=model.layout)
        )
    return sae


def noise_images(n: int, size: tuple[int, int] = (48, 40), seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)) for _ in range(n)]


class LabelledImages:
    """An image source: ``len``, ``[i] -> (PIL, label)``, label names, a JSON description."""

    def __init__(self, n: int, n_labels: int = 3, seed: int = 0) -> None:
        self.images = noise_images(n, seed=seed)
        self.labels = [i % n_labels for i in range(n)]
        self.label_names = [f"class{c}" for c in range(n_labels)]
        self.description = {"kind": "test-noise", "count": n, "seed": seed}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]
