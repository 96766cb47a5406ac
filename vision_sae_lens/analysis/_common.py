"""Helpers shared by the analysis modules: what an SAE covers, image batching, site activations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from vision_sae_lens.errors import ConfigError, ImageInputError, OutOfRangeError, SAEMismatchError
from vision_sae_lens.layout import Layout
from vision_sae_lens.metadata import vision_facts_of

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE


@dataclass(frozen=True)
class SAEView:
    """The facts analysis needs about one SAE on one model: site, token selection, layout."""

    site: str
    tokens: str
    layout: Layout
    """Token layout of the rows (a ``RowLayout`` for plain rows: image views refuse it)."""
    token_idx: torch.Tensor
    """Sequence positions the SAE covers (int64, ascending)."""

    @property
    def patch_positions(self) -> torch.Tensor:
        """Positions (into ``token_idx``) of the patch tokens the SAE covers."""
        return (self.token_idx >= self.layout.n_prefix).nonzero().flatten()


def sae_view(sae: SAE, model: HookedSAEViT | None = None, *, layout: Layout | None = None) -> SAEView:
    """Resolve site, tokens and layout of ``sae`` (its vision metadata, else the model's layout, all tokens).

    With a model, the SAE is checked against it first (unknown site, width, token layout).
    """
    if model is not None:
        model.check_sae(sae)
    facts = vision_facts_of(sae)
    site = sae.cfg.metadata.hook_name
    lay: Layout | None
    if facts is not None:
        lay, tokens = facts.layout, facts.tokens
        if model is not None and facts.tokens == "all" and lay.n_tokens != model.layout.n_tokens:
            lay = model.layout
    else:
        lay = layout if layout is not None else model.layout if model is not None else None
        tokens = "all"
    if lay is None:
        raise SAEMismatchError(
            "the SAE has no vision metadata (layout, tokens); pass a model or a store so the "
            "token layout is known, or write it with vision_sae_lens.apply_vision_facts(sae, ...)."
        )
    if not site:
        raise SAEMismatchError("the SAE has no cfg.metadata.hook_name; set it to the site it reads.")
    return SAEView(site=site, tokens=tokens, layout=lay, token_idx=lay.token_indices(tokens))


def check_latents(sae: SAE, latents: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Latent indices as an int64 tensor; IndexError naming the valid range otherwise."""
    idx = torch.as_tensor(latents, dtype=torch.long).flatten()
    d_sae = int(sae.cfg.d_sae)
    bad = idx[(idx < 0) | (idx >= d_sae)]
    if bad.numel():
        raise OutOfRangeError(
            f"latent index {int(bad[0])} is out of range: this SAE has {d_sae} latents (0..{d_sae - 1})."
        )
    return idx


def image_batches(images: Any, batch_size: int) -> Iterator[tuple[int, Any, list[int | None]]]:
    """(offset, batch, labels) over tensors, lists of PIL images / paths, or an image source.

    An image source (``data.open_images``) yields ``(PIL, label)`` items; other inputs have no labels.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, (Image.Image, str)):
        images = [images]
    try:
        n = len(images)
    except TypeError as exc:
        raise ImageInputError(
            f"images must be a tensor, a list of PIL images or paths, or an image source; got {type(images).__name__}"
        ) from exc
    if n == 0:
        raise ImageInputError("the image list is empty: pass at least one image")
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if isinstance(images, torch.Tensor):
            yield start, images[start:stop], [None] * (stop - start)
        else:
            items = [images[i] for i in range(start, stop)]
            yield start, [_image_of(it) for it in items], [_label_of(it) for it in items]


def image_count(images: Any) -> int:
    """Number of images in any accepted input."""
    return 1 if isinstance(images, (Image.Image, str)) else len(images)


def _image_of(item: Any) -> Any:
    return item[0] if isinstance(item, tuple) else item


def _label_of(item: Any) -> int | None:
    if isinstance(item, tuple) and len(item) > 1 and item[1] is not None:
        return int(item[1])
    return None


def site_acts(model: HookedSAEViT, images: Any, site: str) -> torch.Tensor:
    """Activations at ``site`` for one batch of images, running only the blocks needed: (b, t, d)."""
    stop = model.layer_of(site) if site.startswith("blocks.") else None
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=[site], stop_at_layer=stop)
    return cache[site]


def encode_acts(sae: SAE, acts: torch.Tensor) -> torch.Tensor:
    """SAE latents for activations (..., d_in) -> (..., d_sae), in the SAE's dtype and device."""
    param = next(sae.parameters())
    with torch.no_grad():
        return sae.encode(acts.to(device=param.device, dtype=param.dtype))
