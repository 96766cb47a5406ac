"""Image inputs -> the backbone's pixel tensor, through the backbone's own preprocessing.

Accepted: a PIL image, a path, a list of either, a uint8 tensor (c, h, w) or (b, c, h, w), or a float
tensor (b, c, h, w) taken as already preprocessed (like transformers' ``pixel_values``).

:func:`to_model_mode` is the one conversion from any PIL mode (RGBA, LA, P, CMYK, 16-bit, float) to the
mode the backbone reads ("RGB" or "L"). Every path into a backbone (``model.preprocess``, ``run_with_cache``,
recording, interventions, downstream metrics) goes through :func:`prepare_pixels`, so one image gives the
same pixels everywhere. Before the transform, :func:`check_image_size` refuses an image whose resize would
be huge (a thin strip of a few hundred bytes can become gigabytes once its short side is scaled up).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vision_sae_lens.errors import ImageInputError

if TYPE_CHECKING:
    from vision_sae_lens.backbones.spec import BackboneSpec


MAX_RESIZED_PIXELS = 2**25
"""Most pixels an image may have once the backbone's transform has resized it (about 33.5M: 100 MB as
8-bit RGB). Larger resizes come only from extreme aspect ratios: a shortest-edge resize to 224 px turns
a 150000x1 strip (a 520-byte PNG) into 224 x 33.6M pixels."""


def prepare_pixels(images: Any, spec: BackboneSpec) -> torch.Tensor:
    """Turn any accepted image input into a (b, c, h, w) float tensor for ``spec``'s model."""
    channels = int(spec.preprocessing.get("channels", 3))
    height, width = spec.layout.image_size
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            pils = _uint8_to_pil(images, channels)
            return _stack([_transform(img, spec, f"tensor image {i}") for i, img in enumerate(pils)])
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
    pixels = []
    for i, item in enumerate(items):
        name = str(item) if isinstance(item, (str, os.PathLike)) else f"{i} of the batch"
        pixels.append(_transform(to_model_mode(_to_pil(item, spec), channels), spec, name))
    return _stack(pixels)


def check_image_size(size: tuple[int, int], spec: BackboneSpec, name: str) -> None:
    """Refuse an image of ``size`` (width, height) that the backbone's transform would blow up.

    The bound assumes the costliest resize a backbone's preprocessing does, the short side scaled to the
    largest edge the preprocessing names: the resized image must hold at most :data:`MAX_RESIZED_PIXELS`.
    PIL reads the size from a file's header, so a file is refused before it is decoded.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ImageInputError(f"image {name} is empty ({width}x{height} pixels)")
    edge = _resize_edge(spec)
    scale = edge / min(width, height)
    resized = (round(width * scale), round(height * scale))
    if resized[0] * resized[1] > MAX_RESIZED_PIXELS:
        raise ImageInputError(
            f"image {name} is {width}x{height} pixels (aspect ratio {max(width, height) / min(width, height):.0f}:1); "
            f"the backbone's preprocessing would resize it to about {resized[0]}x{resized[1]} pixels, more than "
            f"the {MAX_RESIZED_PIXELS:,} allowed. Crop or pad it to a less extreme shape, or leave it out."
        )


def _resize_edge(spec: BackboneSpec) -> int:
    """The largest edge (pixels) the preprocessing resizes or crops to."""
    edges = [*spec.layout.image_size]
    for key in ("resize", "size"):
        value = spec.preprocessing.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        edges += [int(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return max(edges)


def _transform(img: Image.Image, spec: BackboneSpec, name: str) -> torch.Tensor:
    check_image_size(img.size, spec, name)
    return spec.transform(img)


def to_model_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Any PIL image -> "RGB" (``channels=3``) or "L" (``channels=1``).

    Transparent images (RGBA, LA, PA, P with transparency) are composited on white, as transformers'
    ``convert_rgb`` does: dropping alpha would show whatever colour the transparent pixels happen to
    hold. A 16-bit value (0..65535, full scale) keeps its high byte (``value >> 8``): that is how PIL
    itself decodes a 16-bit RGB PNG and how torchvision's ``to_dtype(uint16 -> uint8, scale=True)``
    converts, so a 16-bit grey PNG gives the pixels of the same picture saved as 16-bit RGB. Mode "I"
    (what older PIL gives a 16-bit grey PNG) is read the same way, clipped to 0..65535. Float images
    ("F", taken in [0, 1]) are scaled by 255. PIL's own ``convert`` would clip both to white.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        high_byte = np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8
        img = Image.fromarray(high_byte.astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64) * 255.0
        img = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _to_pil(item: Any, spec: BackboneSpec) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise ImageInputError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:  # reads the header only; PIL's decompression-bomb limit applies
                check_image_size(img.size, spec, str(path))
                img.load()
                return img
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
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
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    return [to_model_mode(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a), channels) for a in array]


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ImageInputError(f"preprocessing produced tensors of different shapes {sorted(shapes)}")
    return torch.stack(tensors)
