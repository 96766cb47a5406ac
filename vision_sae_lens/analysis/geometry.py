"""Map patch activations back onto the original image (undo the backbone's resize and crop).

A backbone sees a resized and cropped copy of each image. ``InputGeometry`` is the affine map from
model-input pixels to original-image pixels (``x = (u + left) / scale_x``), derived from the
backbone's JSON ``preprocessing`` description (the same dict that ``model.preprocessing`` and an
SAE's vision metadata carry), so a store-only workflow can place heatmaps without the model.
``grid_to_image`` paints a (grid_h, grid_w) activation grid at original resolution (pixels the
model never saw get NaN), and ``overlay`` blends it over the image with a colour map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vision_sae_lens.errors import ConfigError
from vision_sae_lens.layout import TokenLayout


@dataclass(frozen=True)
class InputGeometry:
    """Where the model input (after resize + crop) lies in an original image."""

    scale_x: float
    """Resized width / original width."""
    scale_y: float
    """Resized height / original height."""
    left: float
    """Columns cropped off the left of the resized image (negative for padding)."""
    top: float
    """Rows cropped off the top of the resized image (negative for padding)."""

    def to_original(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[Any, Any]:
        """Model-input pixel coordinates (u: column, v: row) -> original image coordinates (x, y)."""
        return (np.asarray(u) + self.left) / self.scale_x, (np.asarray(v) + self.top) / self.scale_y

    def to_input(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[Any, Any]:
        """Original image coordinates (x, y) -> model-input pixel coordinates (u, v)."""
        return np.asarray(x) * self.scale_x - self.left, np.asarray(y) * self.scale_y - self.top

    def box_in_original(self, box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        """A (left, top, right, bottom) box of the model input, in original-image coordinates."""
        x0, y0 = self.to_original(box[0], box[1])
        x1, y1 = self.to_original(box[2], box[3])
        return (float(x0), float(y0), float(x1), float(y1))


def input_geometry(
    preprocessing: dict[str, Any], layout: TokenLayout, original_size: tuple[int, int]
) -> InputGeometry:
    """The resize/crop geometry the backbone applies to an image of ``original_size`` (width, height).

    Understands the descriptions written by the timm, open_clip, transformers and torchvision adapters:
    ``resize`` as an int (shortest edge), a square pair (shortest edge for timm/open_clip, exact size
    for transformers), or ``crop``/``resize_mode`` ``"squash"`` (exact size); then a center crop to
    ``size``. Without a ``resize`` key the image is taken as squashed to the model input.
    """
    width, height = original_size
    out_h, out_w = (int(v) for v in (preprocessing.get("size") or layout.image_size))
    resize = preprocessing.get("resize")
    squash = "squash" in (preprocessing.get("crop"), preprocessing.get("resize_mode"))
    if resize is None or squash:
        return InputGeometry(out_w / width, out_h / height, 0.0, 0.0)
    if preprocessing.get("resize_mode") == "longest":
        scale = min(out_w / width, out_h / height)
        new_w, new_h = width * scale, height * scale
        return InputGeometry(scale, scale, -(out_w - new_w) / 2, -(out_h - new_h) / 2)
    if isinstance(resize, (list, tuple)):
        rh, rw = (int(v) for v in resize)
        exact = preprocessing.get("library") == "transformers" or rh != rw
        new_w, new_h = (rw, rh) if exact else _shortest_edge(width, height, rh)
    else:
        new_w, new_h = _shortest_edge(width, height, int(resize))
    if preprocessing.get("crop", "center") in ("none", None):
        return InputGeometry(new_w / width, new_h / height, 0.0, 0.0)
    # torchvision CenterCrop: top = int(round((h - crop_h) / 2)).
    left = int(round((new_w - out_w) / 2.0))
    top = int(round((new_h - out_h) / 2.0))
    return InputGeometry(new_w / width, new_h / height, float(left), float(top))


def _shortest_edge(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int): the short side becomes ``size``, the long side int(size * long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def grid_to_image(
    values_hw: np.ndarray, layout: TokenLayout, geometry: InputGeometry, original_size: tuple[int, int]
) -> np.ndarray:
    """Paint a (grid_h, grid_w) grid at original resolution: (height, width) float array.

    Each original pixel takes the value of the patch its centre falls in; pixels outside the model's
    crop are NaN (the model never saw them).
    """
    values_hw = np.asarray(values_hw, dtype=np.float32)
    if values_hw.shape != tuple(layout.grid):
        raise ConfigError(f"expected a {layout.grid} grid, got shape {values_hw.shape}")
    width, height = original_size
    u, _ = geometry.to_input(np.arange(width) + 0.5, 0.0)
    _, v = geometry.to_input(0.0, np.arange(height) + 0.5)
    col = np.floor(u / layout.patch_size[1]).astype(np.int64)
    row = np.floor(v / layout.patch_size[0]).astype(np.int64)
    col_ok = (u >= 0) & (col < layout.grid[1])
    row_ok = (v >= 0) & (row < layout.grid[0])
    out = values_hw[
        np.clip(row, 0, layout.grid[0] - 1)[:, None], np.clip(col, 0, layout.grid[1] - 1)[None, :]
    ]
    out[~(row_ok[:, None] & col_ok[None, :])] = np.nan
    return out


def overlay(
    image: Image.Image,
    heat_hw: np.ndarray,
    *,
    vmax: float | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
) -> Image.Image:
    """Blend a heat array (same height/width as ``image``; NaN = unseen) over the image as RGB.

    Values are scaled to ``[0, vmax]`` (default: the array's max); zero stays transparent so the image
    shows through where the latent is silent, and unseen pixels are dimmed.
    """
    from matplotlib import colormaps

    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if heat_hw.shape != base.shape[:2]:
        raise ConfigError(f"heat array {heat_hw.shape} does not match the image {base.shape[:2]}")
    seen = ~np.isnan(heat_hw)
    heat = np.nan_to_num(heat_hw, nan=0.0)
    top = float(np.max(heat)) if vmax is None else float(vmax)
    norm = np.clip(heat / top, 0.0, 1.0) if top > 0 else np.zeros_like(heat)
    colour = colormaps[cmap](norm)[..., :3]
    weight = (alpha * np.sqrt(norm))[..., None]
    out = base * (1 - weight) + colour * weight
    out[~seen] *= 0.35
    return Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
