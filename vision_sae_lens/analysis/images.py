"""Image-level SAE use: latents as patch grids, reconstructions, and heatmaps on the original image.

``encode_images`` runs the hooked backbone up to the SAE's site (stopping early), keeps the tokens the
SAE was trained on, and returns the latents shaped like the image: ``patches`` (b, h, w, s) plus the
CLS / register latents in ``prefix`` when the SAE covers them. ``decode`` maps latents back to the
site's space in the same shape. ``heatmap`` paints one latent's patch grid over the original image,
undoing the backbone's resize and crop (see :mod:`vision_sae_lens.analysis.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vision_sae_lens.analysis._common import (
    check_latents,
    encode_acts,
    image_batches,
    image_count,
    sae_view,
    site_acts,
)
from vision_sae_lens.analysis.geometry import grid_to_image, input_geometry, overlay
from vision_sae_lens.errors import ConfigError, ImageInputError
from vision_sae_lens.layout import Layout

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE


@dataclass(frozen=True)
class ImageFeatures:
    """Per-token vectors of a batch of images, shaped like the images (latents or reconstructions)."""

    patches: torch.Tensor | None
    """(b, grid_h, grid_w, s) vectors of the patch tokens, or None if the SAE covers no patches."""
    prefix: torch.Tensor | None
    """(b, p, s) vectors of the CLS / register tokens the SAE covers, or None."""
    prefix_tokens: torch.Tensor
    """Sequence positions (int64) of the ``prefix`` entries."""
    layout: Layout
    """Token layout of the model the images went through."""

    @property
    def cls(self) -> torch.Tensor | None:
        """(b, s) CLS vectors when the SAE covers the CLS token."""
        if self.prefix is None or not self.layout.has_cls or 0 not in self.prefix_tokens.tolist():
            return None
        return self.prefix[:, self.prefix_tokens.tolist().index(0)]

    def tokens_bts(self) -> torch.Tensor:
        """All covered tokens in sequence order: (b, prefix + patches, s)."""
        parts = [] if self.prefix is None else [self.prefix]
        if self.patches is not None:
            parts.append(self.patches.flatten(1, 2))
        return torch.cat(parts, dim=1)

    def to_sparse(self) -> torch.Tensor:
        """The patch grid as a sparse COO tensor (most latents are zero)."""
        if self.patches is None:
            raise ConfigError("this SAE covers no patch tokens; use .prefix")
        return self.patches.to_sparse()

    def map(self, fn: Any) -> ImageFeatures:
        """Apply ``fn`` to every tensor along the last axis (e.g. a decoder)."""
        return replace(
            self,
            patches=None if self.patches is None else fn(self.patches),
            prefix=None if self.prefix is None else fn(self.prefix),
        )


def encode_images(
    model: HookedSAEViT, sae: SAE, images: Any, *, batch_size: int = 32, progress: bool = True
) -> ImageFeatures:
    """SAE latents of images, shaped (b, grid_h, grid_w, d_sae) for patches plus CLS/registers.

    ``images``: PIL images, paths, a uint8/float tensor batch, or an image source. Runs in batches of
    ``batch_size`` with a progress bar; the backbone stops after the SAE's block.
    """
    view = sae_view(sae, model)
    n = image_count(images)
    prefix_mask = view.token_idx < view.layout.n_prefix
    patches, prefixes = [], []
    bar = tqdm(total=n, desc="encode images", unit="img", disable=not progress or n <= batch_size)
    for _, batch, _ in image_batches(images, batch_size):
        acts_btd = site_acts(model, batch, view.site)[:, view.token_idx.to(model.device)]
        feats_bts = encode_acts(sae, acts_btd).cpu()
        prefixes.append(feats_bts[:, prefix_mask])
        patches.append(feats_bts[:, ~prefix_mask])
        bar.update(feats_bts.shape[0])
    bar.close()
    return _shape(torch.cat(patches), torch.cat(prefixes), view.token_idx[prefix_mask], view.layout)


def decode(sae: SAE, feats: ImageFeatures | torch.Tensor) -> ImageFeatures | torch.Tensor:
    """Reconstruct the site's activations from latents, keeping the shape: (..., d_sae) -> (..., d_in)."""
    param = next(sae.parameters())

    def run(t: torch.Tensor) -> torch.Tensor:
        if t.shape[-1] != sae.cfg.d_sae:
            raise ConfigError(f"latents have width {t.shape[-1]}, the SAE has d_sae={sae.cfg.d_sae}")
        with torch.no_grad():
            return sae.decode(t.to(device=param.device, dtype=param.dtype))

    return feats.map(run) if isinstance(feats, ImageFeatures) else run(feats)


def heatmap(
    model: HookedSAEViT,
    sae: SAE,
    image: Any,
    *,
    latent: int,
    vmax: float | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
) -> Image.Image:
    """One latent's patch activations over the original image (same size as the image), as a PIL image.

    ``vmax`` fixes the colour scale (e.g. the latent's max over a dataset) so heatmaps compare.
    """
    original = to_pil(image, model)
    heat_hw = heatmap_array(model, sae, original, latent=latent)
    return overlay(original, heat_hw, vmax=vmax, alpha=alpha, cmap=cmap)


def heatmap_array(model: HookedSAEViT, sae: SAE, image: Any, *, latent: int) -> np.ndarray:
    """One latent's activation at every pixel of the original image: (height, width), NaN where cropped."""
    check_latents(sae, latent)
    original = to_pil(image, model)
    feats = encode_images(model, sae, [original], progress=False)
    if feats.patches is None:
        raise ConfigError("this SAE covers no patch tokens, so it has no spatial heatmap")
    grid_hw = feats.patches[0, :, :, latent].float().numpy()
    geometry = input_geometry(model.preprocessing, model.layout, original.size)
    return grid_to_image(grid_hw, model.layout, geometry, original.size)


def to_pil(image: Any, model: HookedSAEViT | None = None) -> Image.Image:
    """One image as PIL: a PIL image, a path, a uint8 (c, h, w) tensor, or an (image, label) item."""
    if isinstance(image, tuple):
        image = image[0]
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            img.load()
            return img
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
        array = image.permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    raise ImageInputError(
        f"heatmap needs one original image (PIL, path, or uint8 (c, h, w) tensor); got {type(image).__name__}"
    )


def _shape(patches_bns, prefix_bps, prefix_tokens, layout: Layout) -> ImageFeatures:
    b, n, s = patches_bns.shape
    return ImageFeatures(
        patches=patches_bns.reshape(b, *layout.grid, s) if n else None,
        prefix=prefix_bps if prefix_bps.shape[1] else None,
        prefix_tokens=prefix_tokens,
        layout=layout,
    )
