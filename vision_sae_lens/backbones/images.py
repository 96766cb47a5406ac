"""Image inputs -> the backbone's pixel tensor, through the backbone's own preprocessing.

Accepted: a PIL image, a path, a list of either, a uint8 tensor (c, h, w) or (b, c, h, w), or a float
tensor (b, c, h, w) taken as already preprocessed (like transformers' ``pixel_values``). PIL images of
another mode (grayscale, RGBA, palette) are converted to the mode the backbone reads ("RGB" or "L").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, UnidentifiedImageError

from vision_sae_lens.errors import ImageInputError

if TYPE_CHECKING:
    from vision_sae_lens.backbones.spec import BackboneSpec


def prepare_pixels(images: Any, spec: BackboneSpec) -> torch.Tensor:
    """Turn any accepted image input into a (b, c, h, w) float tensor for ``spec``'s model."""
    channels = int(spec.preprocessing.get("channels", 3))
    height, width = spec.layout.image_size
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            return _stack([spec.transform(img) for img in _uint8_to_pil(images, channels)])
        if not images.is_floating_point():
            raise ImageInputError(f"image tensors must be uint8 or float, got {images.dtype}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (channels, height, width):
            raise ImageInputError(
                f"a float tensor is taken as preprocessed pixels and must be (batch, {channels}, {height}, "
                f"{width}); got {tuple(images.shape)}. Pass PIL images, paths or uint8 tensors to have "
                "them preprocessed."
            )
        if images.shape[0] == 0:
            raise ImageInputError("empty batch: pass at least one image")
        return images
    items = [images] if isinstance(images, (Image.Image, str, os.PathLike)) else images
    if not isinstance(items, Sequence) or isinstance(items, (bytes, bytearray)):
        raise ImageInputError(
            f"unsupported image input {type(images).__name__}; pass PIL images, paths, or tensors"
        )
    if len(items) == 0:
        raise ImageInputError("empty batch: pass at least one image")
    mode = "L" if channels == 1 else "RGB"
    return _stack([spec.transform(_to_pil(item).convert(mode)) for item in items])


def _to_pil(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise ImageInputError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                return img
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageInputError(f"cannot read image {path}: {exc}") from exc
    raise ImageInputError(f"cannot use a {type(item).__name__} as an image; pass PIL images or paths")


def _uint8_to_pil(images: torch.Tensor, channels: int) -> list[Image.Image]:
    """uint8 (c, h, w) or (b, c, h, w) -> PIL images in the backbone's mode."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ImageInputError(
            f"uint8 image tensors must be (batch, channels, height, width) with 1, 3 or 4 channels; "
            f"got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ImageInputError("empty batch: pass at least one image")
    mode = "L" if channels == 1 else "RGB"
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).convert(mode) for a in array]


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ImageInputError(f"preprocessing produced tensors of different shapes {sorted(shapes)}")
    return torch.stack(tensors)
